"""Page-wide keys and drops: Ctrl+Enter (⌘+Enter) generates from anywhere on the page, and a PNG dropped anywhere
loads its settings through the "Load settings" box, as in A1111's PNG Info."""

from __future__ import annotations

__all__ = ["PAGE_JS"]

# Installed once per page by a hidden component's js_on_load; listeners on the document survive every re-render.
PAGE_JS = """
if (!window.__headhunterPage) {
  window.__headhunterPage = true;
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || !(event.ctrlKey || event.metaKey)) return;
    const button = document.querySelector('#generate');
    if (!button || button.disabled) return;
    event.preventDefault();
    // the field being typed in commits its value first (a number field sends it on change)
    document.activeElement?.dispatchEvent(new Event('change', {bubbles: true}));
    setTimeout(() => button.click(), 50);
  });
  const pngOf = (event) => [...(event.dataTransfer?.files || [])]
    .find((file) => file.type === 'image/png' || /\\.png$/i.test(file.name));
  const ownBox = (event) => event.target.closest?.('#load-png, #import-preset');
  document.addEventListener('dragover', (event) => {
    if (!ownBox(event) && [...(event.dataTransfer?.types || [])].includes('Files')) event.preventDefault();
  }, true);
  document.addEventListener('drop', (event) => {
    const file = pngOf(event);
    if (!file || ownBox(event)) return;
    event.preventDefault();
    event.stopPropagation();
    const input = document.querySelector('#load-png input[type=file]');
    if (!input) return;
    const files = new DataTransfer();
    files.items.add(file);
    input.files = files.files;
    input.dispatchEvent(new Event('change', {bubbles: true}));
  }, true);
}
"""
