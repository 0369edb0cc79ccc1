// The pages' only script: a confirmation before a form marked data-confirm is sent (withdraw, restore, revoke).
// The server does not depend on it; the reason field and the CSRF token are checked there.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var message = form.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
