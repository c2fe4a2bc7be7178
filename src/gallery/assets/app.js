// Sightline gallery: the page's only script. No framework and no build step; it talks to the
// gallery's JSON API (/api/status, /api/search) and builds the grid with DOM calls only (no
// innerHTML), so nothing from the index is ever parsed as markup.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const DEBOUNCE_MS = 300;
  const TITLES = {
    cluster_unreachable: 'Elasticsearch is unreachable.',
    index_missing: 'The index is missing.',
    sidecar_not_ready: 'The sidecar is not ready.',
    sidecar_error: 'The sidecar failed.',
    model_mismatch: 'The index and the sidecar use different models.',
    bad_request: 'That did not work.',
    too_large: 'That picture is too large.',
    url_refused: 'That URL is not allowed.',
    not_found: 'Not found.',
    unauthorized: 'This gallery needs an access token.',
    elasticsearch: 'Elasticsearch refused the search.',
    network: 'The gallery server is unreachable.',
  };

  const state = {
    query: null, // {text} | {image, preview, label} | {url} | {like, preview, label}
    offset: 0,
    nextOffset: null,
    status: null,
    token: sessionStorage.getItem('sightline-token') || '',
    controller: null,
    done: 0,
    timer: null,
  };

  // ---------------------------------------------------------------------------------------
  // API

  async function api(path, body, signal) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let response;
    try {
      response = await fetch(path, {
        method: body === undefined ? 'GET' : 'POST',
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        credentials: 'same-origin',
      });
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw { code: 'network', message: String(err.message || err) };
    }
    let json = null;
    try { json = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      const error = (json && json.error) || {};
      throw { code: error.code || 'network', message: error.message || ('HTTP ' + response.status) };
    }
    return json;
  }

  // ---------------------------------------------------------------------------------------
  // Banner (the page's states)

  function showBanner(code, message, kind) {
    const banner = $('banner');
    banner.dataset.code = code;
    banner.dataset.kind = kind || 'error';
    $('banner-title').textContent = TITLES[code] || 'Something went wrong.';
    $('banner-text').textContent = message || '';
    $('token-form').hidden = code !== 'unauthorized';
    banner.hidden = false;
  }

  function hideBanner() {
    const banner = $('banner');
    banner.hidden = true;
    delete banner.dataset.code;
  }

  // ---------------------------------------------------------------------------------------
  // Filters

  function kilobytes(id) {
    const value = $(id).value.trim();
    if (value === '' || !Number.isFinite(Number(value))) return null;
    return Math.max(0, Math.round(Number(value) * 1024));
  }

  function dayStart(id) {
    const value = $(id).value;
    if (!value) return null;
    const ms = Date.parse(value + 'T00:00:00');
    return Number.isFinite(ms) ? ms : null;
  }

  function filters() {
    const f = {};
    const formats = Array.from(document.querySelectorAll('input[name=format]:checked'), (i) => i.value);
    if (formats.length) f.formats = formats;
    const min = kilobytes('min-kb');
    const max = kilobytes('max-kb');
    if (min !== null) f.min_bytes = min;
    if (max !== null) f.max_bytes = max + 1023;
    const prefix = $('prefix').value.trim();
    if (prefix) f.path_prefix = prefix;
    const from = dayStart('from-date');
    const to = dayStart('to-date');
    if (from !== null) f.ingested_from_ms = from;
    if (to !== null) f.ingested_to_ms = to + 86400000 - 1;
    const count = Object.keys(f).length;
    $('filter-count').textContent = String(count);
    $('filter-count').hidden = count === 0;
    return f;
  }

  // ---------------------------------------------------------------------------------------
  // Searching

  function search(query, append) {
    if (query) {
      state.query = query;
    }
    if (!state.query) return;
    if (!append) state.offset = 0;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const minScore = Number($('min-score').value);
    const body = Object.assign({}, wire(state.query), {
      offset: append ? state.nextOffset : 0,
      size: Number($('size').value),
      filters: filters(),
    });
    if (minScore > 0) body.min_score = minScore;
    showQuery();
    document.body.classList.add('busy');
    api('/api/search', body, controller.signal)
      .then((reply) => {
        hideBanner();
        render(reply, append);
      })
      .catch((err) => {
        if (err && err.name === 'AbortError') return;
        showBanner(err.code, err.message, err.code === 'bad_request' || err.code === 'too_large' ? 'warn' : 'error');
        finish();
      })
      .finally(() => {
        if (state.controller === controller) {
          state.controller = null;
          document.body.classList.remove('busy');
        }
      });
  }

  /// The request fields of a query (the page keeps a preview and a label beside them).
  function wire(query) {
    if (query.text !== undefined) return { text: query.text };
    if (query.image !== undefined) return { image: query.image };
    if (query.url !== undefined) return { url: query.url };
    return { like: query.like };
  }

  function finish() {
    state.done += 1;
    $('grid').dataset.done = String(state.done);
  }

  function render(reply, append) {
    const grid = $('grid');
    if (!append) grid.replaceChildren();
    for (const hit of reply.hits) grid.appendChild(tile(hit));
    state.nextOffset = reply.next_offset;
    $('more').hidden = reply.next_offset === null || reply.next_offset === undefined;
    const empty = $('empty');
    if (grid.children.length === 0) {
      empty.textContent = reply.below_min_score > 0
        ? 'No picture scores above the minimum score; lower it in Filters.'
        : 'No pictures match.';
      empty.hidden = false;
    } else {
      empty.hidden = true;
    }
    finish();
  }

  function humanBytes(bytes) {
    if (bytes === null || bytes === undefined) return '';
    if (bytes < 1024) return bytes + ' B';
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + ' KB';
    return (bytes / 1024 / 1024).toFixed(1) + ' MB';
  }

  function dimensions(hit) {
    return hit.width && hit.height ? hit.width + '×' + hit.height : '';
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function tile(hit) {
    const li = el('li', 'tile');
    li.dataset.id = hit.id;
    const open = el('button', 'open');
    open.type = 'button';
    open.setAttribute('aria-label', 'Open ' + (hit.file_name || hit.id));
    if (hit.thumbnail) {
      const img = el('img');
      img.src = hit.thumbnail;
      img.alt = '';
      img.loading = 'lazy';
      open.appendChild(img);
    } else {
      open.appendChild(el('span', 'noimg', 'no thumbnail'));
    }
    open.addEventListener('click', () => openViewer(hit));
    li.appendChild(open);
    if (hit.copies > 1) {
      const dup = el('span', 'dup', '×' + hit.copies);
      dup.title = hit.copies + ' identical files (same content hash)';
      li.appendChild(dup);
    }
    const meta = el('div', 'meta');
    const name = el('span', 'name', hit.file_name || hit.id);
    name.title = hit.path;
    meta.appendChild(name);
    meta.appendChild(el('span', 'path', hit.path));
    const row = el('div', 'row');
    const score = el('span', 'score', hit.score.toFixed(3));
    score.title = 'score';
    row.appendChild(score);
    row.appendChild(el('span', '', [humanBytes(hit.bytes), dimensions(hit)].filter(Boolean).join(' · ')));
    meta.appendChild(row);
    const actions = el('div', 'row');
    const like = el('button', 'like', 'More like this');
    like.type = 'button';
    like.addEventListener('click', () => moreLike(hit));
    actions.appendChild(like);
    meta.appendChild(actions);
    li.appendChild(meta);
    return li;
  }

  function moreLike(hit) {
    $('q').value = '';
    search({ like: hit.id, preview: hit.thumbnail, label: 'More like ' + (hit.file_name || hit.id) });
  }

  function showQuery() {
    const q = state.query;
    const section = $('query');
    if (!q || q.text !== undefined) {
      section.hidden = true;
      return;
    }
    const img = $('query-image');
    img.hidden = !q.preview;
    if (q.preview) img.src = q.preview;
    $('query-text').textContent = q.label || q.url || '';
    section.hidden = false;
  }

  function clearQuery() {
    if (state.controller) state.controller.abort();
    state.query = null;
    $('q').value = '';
    $('query').hidden = true;
    $('grid').replaceChildren();
    $('more').hidden = true;
    $('empty').textContent = 'Type a few words, or drop a picture anywhere on this page.';
    $('empty').hidden = false;
    $('q').focus();
  }

  // ---------------------------------------------------------------------------------------
  // Picture queries: file picker, drag and drop, paste

  function searchFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith('image/')) {
      showBanner('bad_request', file.name + ' is not a picture (' + file.type + ').', 'warn');
      return;
    }
    const limit = state.status ? state.status.max_upload_bytes : 0;
    if (limit && file.size > limit) {
      showBanner('too_large', file.name + ' is ' + humanBytes(file.size) + '; the gallery takes pictures up to ' + humanBytes(limit) + '.', 'warn');
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      $('q').value = '';
      search({ image: String(reader.result), preview: URL.createObjectURL(file), label: file.name || 'pasted picture' });
    };
    reader.onerror = () => showBanner('bad_request', 'Cannot read ' + file.name + '.', 'warn');
    reader.readAsDataURL(file);
  }

  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes('Files');
  }

  function wireDrop() {
    let depth = 0;
    window.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      depth += 1;
      $('drop').hidden = false;
    });
    window.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) $('drop').hidden = true;
    });
    window.addEventListener('dragover', (e) => {
      if (hasFiles(e)) e.preventDefault();
    });
    window.addEventListener('drop', (e) => {
      depth = 0;
      $('drop').hidden = true;
      if (!e.dataTransfer) return;
      const file = e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) {
        e.preventDefault();
        searchFile(file);
        return;
      }
      const url = (e.dataTransfer.getData('text/uri-list') || '').split('\n')[0].trim();
      if (url && state.status && state.status.url_queries) {
        e.preventDefault();
        $('url').value = url;
        search({ url, label: url });
      }
    });
    document.addEventListener('paste', (e) => {
      const items = (e.clipboardData && e.clipboardData.items) || [];
      for (const item of items) {
        if (item.kind === 'file' && item.type.startsWith('image/')) {
          e.preventDefault();
          searchFile(item.getAsFile());
          return;
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Larger view

  function openViewer(hit) {
    const dialog = $('viewer');
    const img = $('viewer-image');
    img.src = hit.thumbnail || '';
    img.alt = hit.file_name || '';
    img.hidden = !hit.thumbnail;
    $('viewer-title').textContent = hit.file_name || hit.id;
    const meta = $('viewer-meta');
    meta.replaceChildren();
    const rows = [
      ['Score', hit.score.toFixed(4)],
      ['Path', hit.path],
      ['Format', hit.format || ''],
      ['Size', [dimensions(hit), humanBytes(hit.bytes)].filter(Boolean).join(', ')],
      ['Ingested', ingested(hit.ingested_at)],
      ['Content hash', hit.content_hash || hit.id],
    ];
    if (hit.copies > 1) rows.push(['Identical copies', hit.copies + (hit.other_paths.length ? ': ' + hit.other_paths.join(', ') : '')]);
    for (const [key, value] of rows) {
      if (!value) continue;
      meta.appendChild(el('dt', '', key));
      meta.appendChild(el('dd', '', value));
    }
    $('viewer-like').onclick = () => {
      dialog.close();
      moreLike(hit);
    };
    dialog.showModal();
    $('viewer-like').focus();
  }

  function ingested(value) {
    if (value === null || value === undefined) return '';
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  // ---------------------------------------------------------------------------------------
  // Keyboard: "/" to search, arrows between tiles, Escape clears the box

  function wireKeyboard() {
    document.addEventListener('keydown', (e) => {
      const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement;
      if (e.key === '/' && !typing && !$('viewer').open) {
        e.preventDefault();
        $('q').focus();
      }
    });
    $('q').addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        clearQuery();
      } else if (e.key === 'ArrowDown') {
        const first = document.querySelector('#grid .open');
        if (first) {
          e.preventDefault();
          first.focus();
        }
      }
    });
    $('grid').addEventListener('keydown', (e) => {
      const moves = { ArrowLeft: -1, ArrowRight: 1 };
      if (!(e.key in moves) && e.key !== 'ArrowUp' && e.key !== 'ArrowDown') return;
      const tiles = Array.from(document.querySelectorAll('#grid .open'));
      const at = tiles.indexOf(document.activeElement);
      if (at < 0) return;
      const top = tiles[0].getBoundingClientRect().top;
      const perRow = Math.max(1, tiles.filter((t) => t.getBoundingClientRect().top === top).length);
      let next = at + (moves[e.key] || (e.key === 'ArrowDown' ? perRow : -perRow));
      if (e.key === 'ArrowUp' && next < 0) {
        $('q').focus();
        e.preventDefault();
        return;
      }
      next = Math.min(tiles.length - 1, Math.max(0, next));
      tiles[next].focus();
      e.preventDefault();
    });
  }

  // ---------------------------------------------------------------------------------------
  // Start

  function showStatus(status) {
    state.status = status;
    $('by-url').hidden = !status.url_queries;
    const parts = ['index ' + status.index.name];
    if (status.cluster.ok) parts.push('Elasticsearch ' + status.cluster.version);
    if (status.sidecar.ok) parts.push('model ' + status.sidecar.model + ' (' + status.sidecar.dimensions + ' dims)');
    $('status').textContent = parts.join(' · ');
    if (status.state !== 'ready') showBanner(status.state, status.message, 'error');
  }

  function loadStatus() {
    return api('/api/status').then(showStatus).catch((err) => showBanner(err.code, err.message));
  }

  function wireControls() {
    $('q').addEventListener('input', () => {
      clearTimeout(state.timer);
      const text = $('q').value.trim();
      if (!text) return;
      state.timer = setTimeout(() => search({ text }), DEBOUNCE_MS);
    });
    $('search').addEventListener('submit', (e) => {
      e.preventDefault();
      clearTimeout(state.timer);
      const text = $('q').value.trim();
      if (text) search({ text });
    });
    $('pick').addEventListener('click', () => $('file').click());
    $('file').addEventListener('change', () => {
      searchFile($('file').files[0]);
      $('file').value = '';
    });
    $('by-url').addEventListener('submit', (e) => {
      e.preventDefault();
      const url = $('url').value.trim();
      if (url) search({ url, label: url });
    });
    $('more').addEventListener('click', () => search(null, true));
    $('clear-query').addEventListener('click', clearQuery);
    let filterTimer = null;
    const refilter = () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => search(null, false), DEBOUNCE_MS);
    };
    for (const input of document.querySelectorAll('#filters input, #filters select')) {
      input.addEventListener(input.type === 'checkbox' || input.tagName === 'SELECT' ? 'change' : 'input', refilter);
    }
    $('min-score').addEventListener('input', () => {
      $('min-score-out').textContent = Number($('min-score').value).toFixed(2);
    });
    $('clear-filters').addEventListener('click', () => {
      for (const input of document.querySelectorAll('#filters input')) {
        if (input.type === 'checkbox') input.checked = false;
        else if (input.type === 'range') input.value = '0';
        else input.value = '';
      }
      $('min-score-out').textContent = '0.00';
      refilter();
    });
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      state.token = $('token').value.trim();
      sessionStorage.setItem('sightline-token', state.token);
      hideBanner();
      loadStatus().then(() => search(null, false));
    });
  }

  wireControls();
  wireDrop();
  wireKeyboard();
  loadStatus();
  $('grid').dataset.done = '0';
})();
