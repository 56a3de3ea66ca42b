// ortserve console: confirm each action, and show the model's live events (Server-Sent Events).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
  const list = document.getElementById("events");
  if (list === null || !window.EventSource) {
    return;
  }
  const source = new EventSource(list.dataset.source);
  source.onopen = () => {
    document.body.dataset.events = "open";
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    const at = new Date(event.time_ns / 1e6).toLocaleTimeString();
    let text = `${at} ${event.kind}`;
    if (event.version) text += ` v${event.version}`;
    if (event.state) text += ` ${event.state}`;
    if (event.detail) text += ` (${event.detail})`;
    item.textContent = text; // text, never HTML: details carry registry strings
    document.getElementById("events-empty")?.remove();
    list.prepend(item);
    while (list.children.length > 50) {
      list.lastElementChild.remove();
    }
  };
});
