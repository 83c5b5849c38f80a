// Keyboard shortcuts of the labeling view: 1-4 choose, s skips. They click the buttons, so the
// server sees exactly what a click sends; keys typed into a text field are left alone.
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
