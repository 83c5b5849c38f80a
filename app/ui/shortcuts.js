// Keyboard shortcuts of the labeling view: 1-4 choose, s skips. They click the buttons, so the
// server sees exactly what a click sends; keys typed into a text field are left alone. The
// judgments per criterion are radio buttons under the pair (q/w/e for the first criterion's A, B,
// tie, then z/x/c, u/i/o, j/k/l): their keys only tick them, in the page, and a choice button
// sends what is ticked (`window.pfJudged`, the buttons' `js`), with a rewrite of a response
// when the annotator opened one ("Rewrite A / B").
// The guidelines panel (sent closed with each pair): open the first time a version shows in this
// browser, then as the annotator left it, open or closed, across clicks.
(() => {
  const store = (key, value) => {
    try {
      if (value === undefined) return localStorage.getItem(key);
      localStorage.setItem(key, value);
    } catch (error) {
      return null; // storage refused (a private window): the panel stays as sent
    }
    return value;
  };
  const syncGuidelines = () => {
    const panel = document.getElementById("pf-guidelines");
    if (!panel || panel.dataset.pfSynced) return;
    panel.dataset.pfSynced = "1";
    const version = panel.dataset.version;
    const fresh = store("pf-guidelines-seen") !== version;
    panel.open = fresh || store("pf-guidelines-open") === "1";
    store("pf-guidelines-seen", version);
    if (fresh) store("pf-guidelines-open", "1");
    panel.addEventListener("toggle", () => store("pf-guidelines-open", panel.open ? "1" : "0"));
  };
  // Gradio updates the page's HTML in place, keeping elements whose tag matches, so a ticked
  // radio button would stay ticked on the next pair: each new render (it drops the marks set
  // here) starts the judgments afresh.
  const resetCriteria = () => {
    const box = document.getElementById("pf-rewrite");
    if (!box || box.dataset.pfFresh) return;
    box.dataset.pfFresh = "1";
    for (const input of document.querySelectorAll("#pf-criteria input:checked")) {
      input.checked = false;
    }
    const text = document.getElementById("pf-rewrite-text");
    if (text) text.value = "";
  };
  // "Rewrite A / B" opens the editor on that response's source text; "Cancel" closes it.
  document.addEventListener("click", (event) => {
    const editor = document.getElementById("pf-rewrite-editor");
    if (!editor || !(event.target instanceof Element)) return;
    const open = event.target.closest(".pf-rewrite-open");
    if (open) {
      const side = open.dataset.side;
      editor.dataset.side = side;
      document.getElementById("pf-rewrite-side").textContent = side === "left" ? "A" : "B";
      const text = document.getElementById("pf-rewrite-text");
      text.value = document.getElementById(`pf-raw-${side}`).value;
      editor.hidden = false;
      text.focus();
    } else if (event.target.closest("#pf-rewrite-cancel")) {
      editor.hidden = true;
      document.getElementById("pf-rewrite-text").value = "";
    }
  });
  new MutationObserver(() => {
    syncGuidelines();
    resetCriteria();
  }).observe(document.documentElement, {
    childList: true,
    subtree: true,
    attributes: true,
    attributeFilter: ["data-pf-synced", "data-pf-fresh"],
  });
})();
(() => {
  const keys = { "1": "pf-left", "2": "pf-right", "3": "pf-tie", "4": "pf-both-bad", s: "pf-skip" };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    // typing into a text field; a radio button (a criterion ticked with the mouse) keeps the keys
    const typing =
      target &&
      (target.isContentEditable ||
        /^(TEXTAREA|SELECT)$/.test(target.tagName) ||
        (target.tagName === "INPUT" && !/^(radio|checkbox|button)$/.test(target.type)));
    if (typing) return;
    const key = event.key.toLowerCase();
    const judged = document.querySelector(`#pf-criteria input[data-key="${CSS.escape(key)}"]`);
    if (judged) {
      event.preventDefault();
      judged.checked = true;
      return;
    }
    const id = keys[key];
    const button = id && document.getElementById(id);
    if (button && button.offsetParent !== null && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
})();
// The shown pair as a choice button sends it: with the judgments ticked on it,
// {pair, criteria: {criterion: "left" | "right" | "tie"}}, and a rewrite made of one response,
// {pair, rewrite: {side, text}}; its id alone when there is neither.
window.pfJudged = (pair) => {
  const shown = { pair };
  const criteria = {};
  for (const input of document.querySelectorAll("#pf-criteria input:checked")) {
    criteria[input.closest(".pf-criterion").dataset.criterion] = input.value;
  }
  if (Object.keys(criteria).length) shown.criteria = criteria;
  const editor = document.getElementById("pf-rewrite-editor");
  if (editor && !editor.hidden) {
    const side = editor.dataset.side;
    const text = document.getElementById("pf-rewrite-text").value;
    if (text.trim() && text.trim() !== document.getElementById(`pf-raw-${side}`).value.trim()) {
      shown.rewrite = { side, text };
    }
  }
  return Object.keys(shown).length > 1 ? shown : pair;
};
