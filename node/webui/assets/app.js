// trireme's service map: the node's flows over a time window, polled from
// the daemon's read-only API (api/map, api/flows, api/policy). Every text
// from the daemon (names, tags, rules) reaches the page through
// textContent or cytoscape's canvas labels, never as HTML.
'use strict';

const colours = { allowed: '#2e9e44', denied: '#d64545', none: '#9aa5b1' };

const cy = cytoscape({
  container: document.getElementById('cy'),
  wheelSensitivity: 0.3,
  minZoom: 0.2,
  maxZoom: 1.5,
  style: [
    { selector: 'node', style: { 'label': 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 4, 'width': 28, 'height': 28 } },
    { selector: 'node[kind = "pu"]', style: { 'shape': 'round-rectangle', 'background-color': '#3b6fb6' } },
    { selector: 'node[kind = "peer"]', style: { 'shape': 'ellipse', 'background-color': '#7d4fb5' } },
    { selector: 'node[kind = "external"]', style: { 'shape': 'diamond', 'background-color': '#7b8794' } },
    { selector: 'node[kind = "group"]', style: { 'shape': 'round-rectangle', 'background-color': '#e4e7eb', 'background-opacity': 0.6, 'border-color': '#9aa5b1', 'border-width': 1, 'text-valign': 'top', 'font-weight': 'bold' } },
    { selector: 'edge', style: { 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'width': 2, 'label': 'data(label)', 'font-size': 10, 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'line-color': 'data(colour)', 'target-arrow-color': 'data(colour)' } },
    { selector: ':selected', style: { 'border-width': 3, 'border-color': '#f0b429', 'line-color': '#f0b429', 'target-arrow-color': '#f0b429' } },
  ],
});
window.cy = cy; // for the browser test and the curious

const groupInput = document.getElementById('group');
const windowSelect = document.getElementById('window');
const status = document.getElementById('status');
const details = document.getElementById('details');
let selected = null;

function edgeData(e) {
  const refused = e.denied + e.rejected;
  const parts = [];
  if (e.allowed) parts.push('\u2713' + e.allowed);
  if (refused) parts.push('\u2717' + refused);
  if (e.none) parts.push('?' + e.none);
  const colour = refused ? colours.denied : (e.allowed ? colours.allowed : colours.none);
  return { id: 'e:' + e.id, edge: e.id, source: e.source, target: e.target, label: parts.join(' ') + '  ' + e.services.join(','),
    colour: colour, allowed: e.allowed, denied: e.denied, rejected: e.rejected, none: e.none };
}

// apply puts the map into the graph: new elements are added, changed ones
// updated, gone ones removed; the layout runs again when nodes came or went.
function apply(m) {
  const want = new Map();
  for (const g of new Set(m.nodes.map(n => n.group).filter(Boolean))) {
    want.set('group:' + g, { group: 'nodes', data: { id: 'group:' + g, label: m.group + '=' + g, kind: 'group' } });
  }
  for (const n of m.nodes) {
    const d = { id: n.id, label: n.label, kind: n.kind, pu: n.pu || '', ips: n.ips || [], tags: n.tags || [] };
    if (n.group) d.parent = 'group:' + n.group;
    want.set(n.id, { group: 'nodes', data: d });
  }
  for (const e of m.edges) want.set('e:' + e.id, { group: 'edges', data: edgeData(e) });

  let relayout = false;
  cy.batch(() => {
    cy.elements().forEach(el => {
      const w = want.get(el.id());
      if (!w || (el.isNode() && (el.data('parent') || '') !== (w.data.parent || ''))) {
        cy.remove(el);
        relayout = relayout || el.isNode();
      }
    });
    const add = [];
    for (const [id, w] of want) {
      const el = cy.getElementById(id);
      if (el.nonempty()) { el.data(w.data); continue; }
      add.push(w);
      relayout = relayout || w.group === 'nodes';
    }
    // Nodes first (parents before children), then edges.
    add.sort((a, b) => (a.group === b.group ? (a.data.kind === 'group' ? -1 : 1) : (a.group === 'nodes' ? -1 : 1)));
    cy.add(add);
  });
  if (relayout) cy.layout({ name: 'cose', animate: false, randomize: true, padding: 40, nodeDimensionsIncludeLabels: true, nodeRepulsion: () => 2000000, idealEdgeLength: () => 160, nestingFactor: 0.8, gravity: 0.1, numIter: 3000, componentSpacing: 120, nodeOverlap: 40 }).run();
  status.textContent = m.nodes.length + ' nodes, ' + m.edges.length + ' edges, window ' + m.window + ', ' + new Date(m.generated).toLocaleTimeString();
  document.body.dataset.updated = m.generated;
}

async function getJSON(path) {
  const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (!r.ok) throw new Error(path + ': ' + r.status + ' ' + (await r.text()));
  return r.json();
}

async function refresh() {
  try {
    const q = new URLSearchParams({ window: windowSelect.value, group: groupInput.value.trim() });
    apply(await getJSON('api/map?' + q));
    if (selected) await showDetails(selected, false);
  } catch (err) {
    status.textContent = 'error: ' + err.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function ruleText(r) {
  if (!r) return 'no rule';
  return r.policy + '/' + r.direction + '/' + r.index + (r.name ? ' (' + r.name + ')' : '');
}

function flowTable(flows) {
  const t = el('table');
  const head = el('tr');
  for (const h of ['time', 'verdict', 'PU', 'dir', 'client → server', 'reason', 'rule', 'pkts out/in']) head.append(el('th', h));
  t.append(head);
  for (const f of flows) {
    const tr = el('tr');
    tr.append(el('td', new Date(f.time).toLocaleTimeString()));
    tr.append(el('td', f.verdict + (f.observed ? '*' : ''), f.verdict));
    tr.append(el('td', f.localName || f.local.id));
    tr.append(el('td', f.direction));
    tr.append(el('td', f.client + ' → ' + f.server + ' ' + f.proto));
    tr.append(el('td', f.reason === 'none' ? '' : f.reason));
    tr.append(el('td', ruleText(f.rule)));
    tr.append(el('td', f.packetsOut + '/' + f.packetsIn));
    t.append(tr);
  }
  return t;
}

function policyView(p) {
  const box = el('div');
  box.append(el('div', p.tags.join(', '), 'tags'));
  if (!p.policies.length) box.append(el('p', 'No policy selects this PU: everything is denied.', 'hint'));
  for (const pol of p.policies) {
    box.append(el('h3', 'policy ' + pol.name + ' (' + pol.selector + ')'));
    for (const [dir, rules] of [['ingress', pol.ingress], ['egress', pol.egress]]) {
      for (const r of rules) {
        const peers = r.peers.length ? r.peers.join(' | ') : 'any peer';
        const ports = r.ports.length ? r.ports.join(',') : 'any port';
        box.append(el('div', dir + '[' + r.index + ']' + (r.name ? ' ' + r.name : '') + ': ' + r.action + ' ' + (dir === 'ingress' ? 'from ' : 'to ') + peers + ' on ' + ports + (r.observe ? ' (observe ' + r.observe + ')' : ''), 'tags'));
      }
    }
  }
  return box;
}

async function showDetails(target, fresh) {
  const id = target.edge || target.id;
  const q = new URLSearchParams({ node: id, window: windowSelect.value });
  const [flows, pol] = await Promise.all([
    getJSON('api/flows?' + q),
    target.pu ? getJSON('api/policy?' + new URLSearchParams({ pu: target.pu })) : null,
  ]);
  if (selected !== target) return;
  details.replaceChildren();
  details.append(el('h2', target.edge ? target.label + ': ' + cy.getElementById(target.source).data('label') + ' → ' + cy.getElementById(target.target).data('label') : target.label));
  if (target.ips && target.ips.length) details.append(el('div', target.ips.join(', '), 'tags'));
  if (pol) {
    details.append(el('h3', 'effective policy'));
    details.append(policyView(pol));
  } else if (target.tags && target.tags.length) {
    details.append(el('div', 'verified tags: ' + target.tags.join(', '), 'tags'));
  }
  details.append(el('h3', 'recent flows (' + flows.length + ')'));
  details.append(flowTable(flows));
}

cy.on('tap', 'node[kind != "group"], edge', evt => {
  selected = evt.target.data();
  showDetails(selected, true).catch(err => { status.textContent = 'error: ' + err.message; });
});
cy.on('tap', evt => { if (evt.target === cy) { selected = null; } });
groupInput.addEventListener('change', () => cy.elements().remove());
windowSelect.addEventListener('change', () => cy.elements().remove());
refresh();
