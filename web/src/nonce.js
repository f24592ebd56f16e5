// xterm.js adds <style> elements of its own; the Content-Security-Policy allows only
// the hub's files and styles carrying this page's nonce (no 'unsafe-inline'), so
// every <style> made on this page gets the nonce before xterm.js is loaded.
const nonce = document.querySelector('meta[name="csp-nonce"]')?.content || "";
const create = Document.prototype.createElement;
Document.prototype.createElement = function (tag, options) {
  const el = create.call(this, tag, options);
  if (nonce && String(tag).toLowerCase() === "style") el.nonce = nonce;
  return el;
};
export { nonce };
