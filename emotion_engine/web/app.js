// Agent-assist page: subscribes to /v1/events on this origin and draws every call.
// No framework and no build step: the server ships this file as it is.
//
// State is kept per call and party from the events alone, so a page opened mid-call
// (or after a reconnect with ?since=SEQ&epoch=EPOCH) rebuilds itself from the server's
// replay. Seqs count from 1 again when the engine restarts (a new epoch): the page then
// ends the calls it still showed open, forgets the old seqs and follows the new ones.
'use strict';

(() => {
  const HISTORY_S = 60; // the meter's chart shows the last minute of call audio
  const MAX_ENDED_CALLS = 100; // ended calls kept for the supervisor list
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 10000;
  const RENDER_DELAY_MS = 100; // coalesce bursts (a replay, a batch of legs) into one render

  const PARTY_ORDER = ['customer', 'agent'];
  const PARTY_NAMES = { customer: 'Customer', agent: 'Agent' };
  // What a spike of each emotion means to the person reading the cue.
  const CUE_WORDS = {
    angry: 'frustration',
    sad: 'distress',
    fearful: 'anxiety',
    disgust: 'annoyance',
  };
  const ACTIONS = {
    escalate: 'Escalate',
    offer_callback: 'Offer a call-back',
    supervisor_listen_in: 'Supervisor listen-in',
    leave_script: 'Leave the script',
  };
  const RECOVERY_WORDS = {
    recovered: 'Recovered',
    not_recovered: 'Not recovered',
    no_low_point: 'No low point',
  };
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // -- query: token (kept out of the address bar) and an optional call filter ----------
  const query = new URLSearchParams(location.search);
  let token = query.get('token');
  if (token) {
    try {
      sessionStorage.setItem('emotion-engine-token', token);
    } catch (_) {
      /* storage may be off; the token then lives for this page only */
    }
    query.delete('token');
    const rest = query.toString();
    history.replaceState(null, '', location.pathname + (rest ? '?' + rest : '') + location.hash);
  } else {
    try {
      token = sessionStorage.getItem('emotion-engine-token');
    } catch (_) {
      token = null;
    }
  }
  const callFilter = query.get('call_id');

  const state = {
    calls: new Map(),
    selected: callFilter,
    pinned: Boolean(callFilter), // a click (or ?call_id) stops automatic selection
    lastSeq: 0, // of state.epoch
    epoch: null, // the engine's stream id; a new one means it restarted
    arrivals: 0, // events handled by this page, across restarts: orders the call list
    everOpen: false,
  };

  // -- formatting ---------------------------------------------------------------------
  const clock = (t) => {
    const s = Math.max(0, Math.floor(t || 0));
    return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  };
  const signed = (x) => (x >= 0 ? '+' : '\u2212') + Math.abs(x).toFixed(2);
  const pct = (p) => `${Math.round(p * 100)}%`;
  const arousalWord = (a) => (a < 0.35 ? 'calm' : a < 0.65 ? 'moderate' : 'high');
  const cueWord = (emotion) => CUE_WORDS[emotion] || emotion;
  const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const partyName = (p) => PARTY_NAMES[p] || capital(p);
  const peakEndWord = (x) => (x <= -0.3 ? 'bad' : x >= 0.2 ? 'good' : 'mixed');

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function agentOf(info) {
    // Agent id from call.start info: L16 metadata, Twilio customParameters, AudioHook
    // customConfig, or a top-level field.
    if (!info || typeof info !== 'object') return null;
    const places = [info, info.metadata, info.custom_parameters, info.custom_config];
    for (const place of places) {
      if (!place || typeof place !== 'object') continue;
      for (const key of ['agent', 'agent_id', 'agentId', 'agentName']) {
        const v = place[key];
        if (typeof v === 'string' && v) return v;
      }
    }
    return null;
  }

  // -- the model ----------------------------------------------------------------------
  function getCall(id) {
    let call = state.calls.get(id);
    if (!call) {
      call = { id, parties: new Map(), hints: [], agent: null, source: null, lastT: 0,
        order: state.arrivals, ended: false, row: null };
      state.calls.set(id, call);
    }
    return call;
  }

  function getParty(call, party) {
    let p = call.parties.get(party);
    if (!p) {
      p = { party, labels: [], history: [], last: null, lastSpeech: null,
        spikes: new Map(), spans: [], eased: null, summary: null, endReason: null,
        endT: null, lastT: 0, dom: null };
      call.parties.set(party, p);
    }
    return p;
  }

  function announce(text) {
    const node = document.getElementById('announcer');
    node.textContent = '';
    // a fresh text node after a tick, so the same words are announced again
    setTimeout(() => { node.textContent = text; }, 30);
  }

  function startSpike(call, p, emotion, fields, at) {
    const had = p.spikes.get(emotion);
    p.spikes.set(emotion, { ...(had || {}), emotion, ...fields });
    const open = p.spans.find((s) => s.emotion === emotion && s.to === null);
    if (open) {
      if (fields.onset != null) open.from = fields.onset;
    } else {
      p.spans.push({ emotion, from: fields.onset ?? at, to: null });
    }
    if (!had) {
      p.eased = null;
      announce(`${partyName(p.party)} ${cueWord(emotion)} rising on call ${call.id}`);
    }
  }

  function endSpike(call, p, emotion, fields) {
    const had = p.spikes.get(emotion);
    p.spikes.delete(emotion);
    const onset = had ? had.onset : null;
    const duration = fields.duration != null ? fields.duration
      : onset != null ? fields.t - onset : null;
    p.eased = { emotion, t: fields.t, duration, reason: fields.reason || null };
    for (const span of p.spans) if (span.emotion === emotion && span.to === null) span.to = fields.t;
    if (had) announce(`${partyName(p.party)} ${cueWord(emotion)} eased on call ${call.id}`);
  }

  function onEvent(e) {
    if (typeof e.call_id !== 'string') return;
    const call = getCall(e.call_id);
    call.lastT = Math.max(call.lastT, e.t || 0);
    if (e.type === 'route.hint') {
      call.hints.push(e);
      announce(`Hint for call ${call.id}: ${ACTIONS[e.action] || e.action}. ${e.reason}`);
      return;
    }
    const p = getParty(call, e.party);
    p.lastT = Math.max(p.lastT, e.t || 0);
    switch (e.type) {
      case 'call.start': {
        Object.assign(p, { labels: e.labels || [], history: [], spans: [], last: null,
          lastSpeech: null, summary: null, endReason: null, endT: null, eased: null });
        p.spikes.clear();
        call.ended = false;
        call.agent = call.agent || agentOf(e.info);
        call.source = call.source || (e.info && (e.info.protocol || e.info.source)) || null;
        break;
      }
      case 'emotion.update': {
        p.last = e;
        if (e.is_speech) p.lastSpeech = e;
        p.history.push({ t: e.t, arousal: e.arousal, speech: e.is_speech,
          probabilities: e.probabilities });
        while (p.history.length && p.history[0].t < e.t - HISTORY_S) p.history.shift();
        p.spans = p.spans.filter((span) => span.to === null || span.to >= e.t - HISTORY_S);
        // The detector's own state heals the view when a spike's start or end event
        // was lost (events.lost): an active spike shows even without its start event.
        for (const [emotion, d] of Object.entries(e.detector || {})) {
          if (d.state === 'active' && !p.spikes.has(emotion)) {
            startSpike(call, p, emotion, { onset: null, score: d.score, baseline: d.baseline }, e.t);
          } else if ((d.state === 'idle' || d.state === 'cooldown') && p.spikes.has(emotion)) {
            endSpike(call, p, emotion, { t: e.t });
          }
        }
        break;
      }
      case 'emotion.spike': {
        if (e.phase === 'start') {
          startSpike(call, p, e.emotion, { onset: e.t, detectedAt: e.detected_at,
            score: e.score, baseline: e.baseline }, e.t);
        } else if (p.spikes.has(e.emotion)) {
          endSpike(call, p, e.emotion, { t: e.t, duration: e.duration_s, reason: e.reason });
        } else if (p.eased && p.eased.emotion === e.emotion) {
          // the update before it already cleared the cue: keep the exact numbers
          Object.assign(p.eased, { t: e.t, duration: e.duration_s, reason: e.reason });
          const span = p.spans.filter((x) => x.emotion === e.emotion).pop();
          if (span) Object.assign(span, { from: e.started_at, to: e.t });
        }
        break;
      }
      case 'call.end': {
        for (const emotion of [...p.spikes.keys()]) endSpike(call, p, emotion, { t: e.t });
        p.summary = e.summary || {};
        p.endReason = e.reason;
        p.endT = e.t;
        call.ended = [...call.parties.values()].every((q) => q.summary !== null);
        if (call.ended) {
          call.order = state.arrivals;
          pruneEnded();
        }
        break;
      }
      default:
        break;
    }
  }

  function pruneEnded() {
    const ended = [...state.calls.values()].filter((c) => c.ended);
    ended.sort((a, b) => a.order - b.order);
    while (ended.length > MAX_ENDED_CALLS) {
      const old = ended.shift();
      if (old.row) old.row.remove();
      state.calls.delete(old.id);
      if (state.selected === old.id) state.selected = null;
    }
  }

  // -- the connection -----------------------------------------------------------------
  let socket = null;
  let retryMs = RETRY_MIN_MS;
  let fresh = false; // no event yet on this connection: an events.lost is the replay's verdict

  function setStatus(kind, text) {
    const node = document.getElementById('status');
    node.dataset.state = kind;
    node.textContent = text;
  }

  function showNotice(text) {
    const node = document.getElementById('notice');
    node.textContent = text;
    node.hidden = !text;
  }

  function eventsUrl() {
    const url = new URL('/v1/events', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (token) url.searchParams.set('token', token);
    if (callFilter) url.searchParams.set('call_id', callFilter);
    // since=0 on the first connection: the server replays what it still holds, so
    // calls in progress show at once; afterwards, exactly what this page missed.
    url.searchParams.set('since', String(state.lastSeq));
    // the epoch of that seq: if the engine restarted since, it says so (events.resync)
    if (state.epoch) url.searchParams.set('epoch', state.epoch);
    return url.toString();
  }

  function connect() {
    setStatus('connecting', state.everOpen ? 'Reconnecting…' : 'Connecting…');
    const ws = new WebSocket(eventsUrl());
    socket = ws;
    fresh = true;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      state.everOpen = true;
      retryMs = RETRY_MIN_MS;
      setStatus('live', 'Live');
    };
    ws.onmessage = (message) => {
      let e;
      try {
        e = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      handle(ws, e);
    };
    ws.onclose = () => {
      if (socket === ws) socket = null;
      const wait = retryMs;
      retryMs = Math.min(Math.max(retryMs * 2, RETRY_MIN_MS), RETRY_MAX_MS);
      const why = opened || state.everOpen ? 'Disconnected'
        : 'Cannot connect (is the engine running, and the token right?)';
      setStatus('reconnecting', `${why}; retrying in ${Math.ceil(wait / 1000)} s…`);
      setTimeout(connect, wait);
    };
  }

  function handle(ws, e) {
    if (e.type === 'events.resync') {
      // since= named a seq of an earlier engine run: the replay of this one follows
      newEpoch(e.epoch);
      return;
    }
    if (typeof e.epoch === 'string' && e.epoch !== state.epoch) newEpoch(e.epoch);
    if (e.type === 'events.lost') {
      onLost(ws, e);
      return;
    }
    fresh = false;
    if (typeof e.seq === 'number') {
      if (e.seq <= state.lastSeq) return; // already seen (overlapping replay)
      state.lastSeq = e.seq;
    }
    state.arrivals += 1;
    onEvent(e);
    scheduleRender();
  }

  function newEpoch(epoch) {
    const restarted = state.epoch !== null && epoch !== state.epoch;
    state.epoch = epoch;
    document.body.dataset.epoch = epoch || '';
    if (!restarted) return;
    // The engine restarted: its seqs start again at 1, and calls it had open are gone
    // from it (a call that goes on arrives again with a new call.start).
    state.lastSeq = 0;
    let closed = 0;
    for (const call of state.calls.values()) {
      if (call.ended) continue;
      for (const p of call.parties.values()) {
        if (p.summary !== null) continue;
        for (const emotion of [...p.spikes.keys()]) endSpike(call, p, emotion, { t: p.lastT });
        Object.assign(p, { summary: {}, endReason: 'engine restarted', endT: p.lastT });
      }
      call.ended = true;
      call.order = ++state.arrivals;
      closed += 1;
    }
    pruneEnded();
    showNotice(`The engine restarted${closed ? `; ${closed} call${closed > 1 ? 's' : ''} open before it ${closed > 1 ? 'are' : 'is'} shown as ended` : ''}. Following the calls since the restart.`);
    scheduleRender();
  }

  function onLost(ws, e) {
    const range = `seq ${e.from_seq}\u2013${e.to_seq}`;
    if (fresh) {
      // The server's replay buffer no longer holds these: nothing more to fetch.
      showNotice(state.lastSeq === 0
        ? `Older events (${e.count}) are no longer held by the engine; calls already in progress fill in from their next update.`
        : `${e.count} events were missed while disconnected (${range}) and could not be replayed; calls in progress fill in from their next update.`);
      return;
    }
    // This page fell behind (its queue on the server overflowed): reconnect at once
    // with since= to fetch the gap from the replay buffer while it is still there.
    showNotice(`Fell behind by ${e.count} events (${range}); fetching them again…`);
    retryMs = 0;
    ws.close();
  }

  // -- rendering ----------------------------------------------------------------------
  let renderTimer = null;
  function scheduleRender() {
    if (renderTimer === null) renderTimer = setTimeout(render, RENDER_DELAY_MS);
  }

  function activeCue(p) {
    const spikes = [...p.spikes.values()];
    if (!spikes.length) return null;
    spikes.sort((a, b) => (a.onset ?? Infinity) - (b.onset ?? Infinity));
    return spikes[0];
  }

  function cueText(p, spike) {
    return `${partyName(p.party)} ${cueWord(spike.emotion)} rising`;
  }

  function cueDuration(p, spike) {
    if (spike.onset == null) return '(ongoing; its start was missed)';
    return `for ${Math.max(0, Math.round(p.lastT - spike.onset))} s`;
  }

  function pickSelection() {
    const calls = [...state.calls.values()];
    const current = state.selected && state.calls.get(state.selected);
    if (state.pinned && current) return;
    if (current && !current.ended) return;
    const active = calls.filter((c) => !c.ended);
    const alerting = active.filter((c) => [...c.parties.values()].some((p) => p.spikes.size));
    const pool = alerting.length ? alerting : active.length ? active : calls;
    pool.sort((a, b) => b.order - a.order);
    if (pool.length && (!current || active.length)) state.selected = pool[0].id;
  }

  function render() {
    renderTimer = null;
    pickSelection();
    renderCalls();
    renderDetail();
    document.body.dataset.lastSeq = String(state.lastSeq);
    const alerts = [...state.calls.values()].filter(
      (c) => !c.ended && [...c.parties.values()].some((p) => p.spikes.size)).length;
    document.title = (alerts ? `\u26a0 ${alerts} alert${alerts > 1 ? 's' : ''} \u00b7 ` : '')
      + 'Agent assist \u00b7 emotion-engine';
  }

  function renderCalls() {
    const calls = [...state.calls.values()];
    calls.sort((a, b) => (a.ended - b.ended) || (b.order - a.order));
    document.getElementById('calls-empty').hidden = calls.length > 0;
    document.getElementById('calls-table').hidden = calls.length === 0;
    const body = document.getElementById('calls');
    calls.forEach((call, i) => {
      if (!call.row) call.row = buildRow(call);
      updateRow(call);
      // move rows only when the order changed, so keyboard focus stays put
      if (body.children[i] !== call.row) body.insertBefore(call.row, body.children[i] || null);
    });
  }

  function buildRow(call) {
    const button = el('button', { type: 'button', class: 'call-link', text: call.id });
    button.addEventListener('click', () => {
      state.selected = call.id;
      state.pinned = true;
      render();
    });
    const cells = {
      call: el('td', {}, button, el('span', { class: 'agent muted' })),
      state: el('td'), length: el('td', { class: 'num' }), now: el('td'),
      alert: el('td'), outcome: el('td'),
    };
    const row = el('tr', { 'data-call-id': call.id }, cells.call, cells.state, cells.length,
      cells.now, cells.alert, cells.outcome);
    row.cells_ = cells;
    return row;
  }

  function updateRow(call) {
    const cells = call.row.cells_;
    const selected = state.selected === call.id;
    call.row.classList.toggle('selected', selected);
    const link = cells.call.querySelector('button');
    if (selected) link.setAttribute('aria-current', 'true');
    else link.removeAttribute('aria-current');
    cells.call.querySelector('.agent').textContent = call.agent ? `agent ${call.agent}` : '';
    const reasons = [...call.parties.values()].map((p) => p.endReason).filter(Boolean);
    cells.state.textContent = call.ended ? `Ended (${reasons[0] || 'hangup'})` : 'Active';
    cells.length.textContent = clock(call.lastT);
    const customer = call.parties.get('customer');
    const now = customer && customer.lastSpeech;
    cells.now.textContent = call.ended || !now ? '\u2014'
      : `${now.dominant} \u00b7 ${arousalWord(now.arousal)}`;
    let alert = '';
    for (const party of PARTY_ORDER) {
      const p = call.parties.get(party);
      const spike = p && activeCue(p);
      if (spike) {
        alert = `\u26a0 ${cueText(p, spike)} (${cueDuration(p, spike)})`;
        break;
      }
    }
    const hint = call.hints[call.hints.length - 1];
    if (!alert && hint) alert = `Hint: ${ACTIONS[hint.action] || hint.action}`;
    cells.alert.textContent = alert || '\u2014';
    cells.alert.classList.toggle('alert', alert.startsWith('\u26a0'));
    const s = customer && customer.summary;
    if (s && s.peak_end_score != null) {
      const rec = s.recovery ? `, ${RECOVERY_WORDS[s.recovery.outcome].toLowerCase()}` : '';
      cells.outcome.textContent = `${capital(s.end_mood || 'unknown')} end${rec} (peak-end ${signed(s.peak_end_score)})`;
    } else {
      cells.outcome.textContent = s ? 'No customer speech' : '\u2014';
    }
  }

  function renderDetail() {
    const call = state.selected && state.calls.get(state.selected);
    const title = document.getElementById('detail-title');
    const meta = document.getElementById('detail-meta');
    const hints = document.getElementById('hints');
    const parties = document.getElementById('parties');
    if (!call) {
      title.textContent = 'No call selected';
      meta.textContent = '';
      hints.replaceChildren();
      parties.replaceChildren();
      return;
    }
    title.textContent = `Call ${call.id}`;
    const bits = [];
    if (call.agent) bits.push(`Agent ${call.agent}`);
    bits.push(call.ended ? 'Ended' : 'Active', clock(call.lastT));
    if (call.source) bits.push(`via ${call.source}`);
    if (!call.parties.has('agent')) bits.push("agent's voice not analysed");
    meta.textContent = bits.join(' \u00b7 ');

    hints.replaceChildren(...call.hints.slice().reverse().map((h) => el('li',
      { class: 'hint', 'data-action': h.action },
      el('strong', { text: ACTIONS[h.action] || h.action }),
      ` \u00b7 ${h.skill ? `skill ${h.skill} \u00b7 ` : ''}priority ${h.priority} \u2014 ${h.reason} `,
      el('span', { class: 'muted', text: `(${partyName(h.party)}, at ${clock(h.t)})` }))));

    const wanted = PARTY_ORDER.filter((name) => call.parties.has(name))
      .concat([...call.parties.keys()].filter((name) => !PARTY_ORDER.includes(name)));
    const sections = wanted.map((name) => {
      const p = call.parties.get(name);
      if (!p.dom) p.dom = buildParty(call, p);
      updateParty(p);
      return p.dom.root;
    });
    if (sections.length !== parties.children.length
        || sections.some((s, i) => parties.children[i] !== s)) {
      parties.replaceChildren(...sections);
    }
  }

  function buildParty(call, p) {
    const id = `party-${call.id}-${p.party}`.replace(/[^A-Za-z0-9_-]/g, '_');
    const dom = {};
    dom.heading = el('h3', { id, text: partyName(p.party) });
    dom.phase = el('span', { class: 'phase muted' });
    dom.heading.append(' ', dom.phase);
    dom.cueText = el('span', { class: 'cue-text' });
    dom.cueTime = el('span', { class: 'cue-time' });
    dom.cueDetail = el('span', { class: 'cue-detail' });
    dom.cue = el('div', { class: 'cue', 'data-active': 'false' },
      el('span', { class: 'cue-icon', 'aria-hidden': 'true', text: '\u26a0' }),
      el('span', { class: 'cue-main' }, dom.cueText, ' ', dom.cueTime), dom.cueDetail);
    dom.cue.hidden = true;
    dom.eased = el('p', { class: 'eased' });
    dom.eased.hidden = true;
    dom.probs = el('div', { class: 'probs' });
    dom.arousal = el('p', { class: 'arousal' });
    dom.svg = document.createElementNS(SVG_NS, 'svg');
    dom.svg.setAttribute('viewBox', '0 0 480 120');
    dom.svg.setAttribute('role', 'img');
    dom.legend = el('figcaption', { class: 'legend' });
    dom.summary = el('div', { class: 'summary', 'data-ready': 'false' });
    dom.summary.hidden = true;
    dom.root = el('section', { class: 'party', 'data-party': p.party, 'aria-labelledby': id },
      dom.heading, dom.cue, dom.eased,
      el('div', { class: 'meter' }, el('h4', { text: 'Now' }), dom.probs, dom.arousal),
      el('figure', { class: 'chart' }, dom.svg, dom.legend),
      dom.summary);
    return dom;
  }

  function updateParty(p) {
    const dom = p.dom;
    const ended = p.summary !== null;
    const speaking = p.last && p.last.is_speech;
    dom.phase.textContent = ended ? `\u00b7 call ended (${p.endReason})`
      : !p.last ? '\u00b7 waiting for speech' : speaking ? '\u00b7 speaking' : '\u00b7 silent';

    const spike = activeCue(p);
    dom.cue.hidden = !spike;
    dom.cue.dataset.active = spike ? 'true' : 'false';
    if (spike) {
      dom.cue.dataset.emotion = spike.emotion;
      dom.cueText.textContent = cueText(p, spike);
      dom.cueTime.textContent = cueDuration(p, spike);
      const since = spike.onset != null ? `since ${clock(spike.onset)} \u00b7 ` : '';
      const others = p.spikes.size > 1 ? ` \u00b7 also ${[...p.spikes.keys()]
        .filter((k) => k !== spike.emotion).map(cueWord).join(', ')}` : '';
      dom.cueDetail.textContent = spike.score != null
        ? `${since}${spike.emotion} score ${spike.score.toFixed(2)} vs this call's usual ${(spike.baseline || 0).toFixed(2)}${others}`
        : `${since}${others}`;
    }
    const eased = !spike && p.eased;
    dom.eased.hidden = !eased;
    if (eased) {
      const after = eased.duration != null ? ` after ${Math.round(eased.duration)} s` : '';
      dom.eased.textContent = `\u2713 ${capital(cueWord(eased.emotion))} eased${after} (at ${clock(eased.t)})`;
    }
    updateMeter(p);
    updateChart(p);
    updateSummary(p);
  }

  function updateMeter(p) {
    const dom = p.dom;
    const u = p.last;
    if (!u) {
      dom.probs.replaceChildren(el('p', { class: 'muted', text: 'No reading yet.' }));
      dom.arousal.textContent = '';
      return;
    }
    dom.probs.dataset.speech = u.is_speech ? 'true' : 'false';
    const shown = p.lastSpeech || u;
    const labels = p.labels.length ? p.labels : Object.keys(shown.probabilities || {});
    const rows = labels.map((label) => {
      const prob = (shown.probabilities || {})[label] || 0;
      const top = shown.is_speech && label === shown.dominant;
      const fill = el('span', { class: 'fill' });
      fill.style.width = pct(prob);
      return el('div', { class: top ? 'prob top' : 'prob', 'data-label': label },
        el('span', { class: 'label', text: (top ? '\u25b8 ' : '') + label }),
        el('span', { class: 'bar', 'aria-hidden': 'true' }, fill),
        el('span', { class: 'value', text: pct(prob) }));
    });
    const note = u.is_speech ? [] : [el('p', { class: 'muted note',
      text: p.lastSpeech ? `Silent now; last speech at ${clock(p.lastSpeech.t)}:` : 'No speech yet.' })];
    dom.probs.replaceChildren(...note, ...rows);
    dom.arousal.textContent = `Arousal ${shown.arousal.toFixed(2)} \u00b7 ${arousalWord(shown.arousal)}`;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  function updateChart(p) {
    const dom = p.dom;
    const X0 = 34;
    const X1 = 474;
    const Y0 = 102; // value 0
    const Y1 = 8; // value 1
    const now = p.lastT;
    const x = (t) => X0 + ((t - (now - HISTORY_S)) / HISTORY_S) * (X1 - X0);
    const y = (v) => Y0 + (Y1 - Y0) * Math.max(0, Math.min(1, v));
    const emotion = Object.keys((p.last && p.last.detector) || {})[0] || 'angry';
    const nodes = [
      svg('line', { x1: X0, y1: Y0, x2: X1, y2: Y0, class: 'axis' }),
      svg('line', { x1: X0, y1: y(0.5), x2: X1, y2: y(0.5), class: 'grid' }),
      svg('line', { x1: X0, y1: Y1, x2: X1, y2: Y1, class: 'grid' }),
    ];
    const label = (x_, y_, text, anchor) => {
      const t = svg('text', { x: x_, y: y_, 'text-anchor': anchor || 'end', class: 'tick' });
      t.textContent = text;
      return t;
    };
    nodes.push(label(X0 - 4, Y0 + 4, '0'), label(X0 - 4, y(0.5) + 4, '0.5'),
      label(X0 - 4, Y1 + 4, '1'), label(X0, 116, '\u221260 s', 'start'),
      label(X1, 116, 'now', 'end'));
    for (const span of p.spans) {
      const a = Math.max(span.from, now - HISTORY_S);
      const b = span.to === null ? now : span.to;
      if (b < a) continue;
      nodes.push(svg('rect', { x: x(a), y: Y1, width: Math.max(2, x(b) - x(a)),
        height: Y0 - Y1, class: 'spike-span' }));
    }
    const path = (value) => {
      let d = '';
      let pen = false;
      let prev = -Infinity;
      for (const h of p.history) {
        // lift the pen where nobody spoke, and across readings this page never got
        if (!h.speech || h.t - prev > 1.25) pen = false;
        prev = h.t;
        if (!h.speech) continue;
        d += `${pen ? 'L' : 'M'}${x(h.t).toFixed(1)},${y(value(h)).toFixed(1)}`;
        pen = true;
      }
      return d;
    };
    nodes.push(svg('path', { d: path((h) => h.arousal), class: 'line arousal' }));
    nodes.push(svg('path', { d: path((h) => (h.probabilities || {})[emotion] || 0),
      class: 'line emotion' }));
    dom.svg.replaceChildren(...nodes);
    const speech = p.history.filter((h) => h.speech);
    const maxOf = (f) => Math.max(...speech.map(f));
    dom.svg.setAttribute('aria-label', speech.length
      ? `Last minute: arousal up to ${maxOf((h) => h.arousal).toFixed(2)}, ${emotion} probability up to ${maxOf((h) => (h.probabilities || {})[emotion] || 0).toFixed(2)}`
      : 'Last minute: no speech');
    if (!dom.legend.childElementCount) {
      dom.legend.append(
        el('span', { class: 'key key-arousal', 'aria-hidden': 'true' }), ' arousal (solid)  ',
        el('span', { class: 'key key-emotion', 'aria-hidden': 'true' }), ` ${emotion} probability (dashed)  `,
        el('span', { class: 'key key-span', 'aria-hidden': 'true' }), ' spike (shaded), last 60 s of call audio');
    }
  }

  function updateSummary(p) {
    const dom = p.dom;
    const s = p.summary;
    dom.summary.hidden = !s;
    dom.summary.dataset.ready = s ? 'true' : 'false';
    if (!s || dom.summary.dataset.drawn === String(p.endT)) return;
    dom.summary.dataset.drawn = String(p.endT);
    const rows = [];
    const row = (term, text) => rows.push(el('dt', { text: term }), el('dd', { text }));
    row('Ended', s.duration_s == null ? `${p.endReason} at ${clock(p.endT)}`
      : `${p.endReason} at ${clock(p.endT)} \u00b7 ${Math.round(s.speech_s || 0)} s of speech in ${Math.round(s.duration_s)} s`);
    if (s.peak) {
      row('Worst moment (peak)', `${s.peak.emotion} ${s.peak.score.toFixed(2)} at ${clock(s.peak.t)} \u00b7 valence ${signed(s.peak.valence)}`);
    }
    if (s.end_state) {
      row('End', `${s.end_state.emotion} \u00b7 valence ${signed(s.end_state.valence)} \u00b7 mood ${s.end_mood || 'n/a'} (last ${Math.round(s.end_state.speech_s)} s of speech)`);
    }
    if (s.peak_end_score != null) {
      row('Peak-end score', `${signed(s.peak_end_score)} (${peakEndWord(s.peak_end_score)}; \u22121 bad \u2026 +1 good)`);
    }
    if (s.recovery) {
      const words = {
        recovered: `ended ${s.recovery.delta.toFixed(2)} better than its worst moment`,
        not_recovered: 'ended about as badly as its worst moment',
        no_low_point: 'never had a clear low point',
      };
      row('Recovery', `${RECOVERY_WORDS[s.recovery.outcome]}: ${words[s.recovery.outcome]}`);
    }
    const spikes = Object.entries(s.spikes_by_emotion || {}).map(([k, v]) => `${k} ${v}`).join(', ');
    row('Spikes', `${s.n_spikes || 0}${spikes ? ` (${spikes})` : ''}`);
    if (!s.peak) row('Speech', 'none heard: no summary');
    dom.summary.replaceChildren(el('h4', { text: 'Call summary' }), el('dl', {}, ...rows));
  }

  connect();
  render();
})();
