// Keyboard answers: a key clicks the button or follows the link whose data-keys list it; one answer
// per page (a second key press while the form is being sent is ignored).
"use strict";
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || document.body.dataset.sent) return;
  const target = [...document.querySelectorAll("[data-keys]")]
    .find((el) => el.dataset.keys.split(" ").includes(event.key));
  if (!target) return;
  event.preventDefault();
  document.body.dataset.sent = "1";
  target.click();
});
