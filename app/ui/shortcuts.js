// Keyboard shortcuts of the labeling view: 1-4 choose, s skips. They click the buttons, so the
// server sees exactly what a click sends; keys typed into a text field are left alone.
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
  new MutationObserver(syncGuidelines).observe(document.documentElement, {
    childList: true,
    subtree: true,
  });
})();
(() => {
  const keys = { "1": "pf-left", "2": "pf-right", "3": "pf-tie", "4": "pf-both-bad", s: "pf-skip" };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      return;
    }
    const id = keys[event.key.toLowerCase()];
    const button = id && document.getElementById(id);
    if (button && button.offsetParent !== null && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
})();
