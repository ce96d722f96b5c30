// gapless dashboard: the buttons call the API, and the runs table refreshes while runs go.
// Served from /assets (the page's Content-Security-Policy allows no inline script).
(function () {
  'use strict';

  var meta = document.querySelector('meta[name="gapless-csrf"]');
  if (!meta) { return; } // the login page
  var csrf = meta.getAttribute('content');
  var status = document.getElementById('action-status');
  var NOTICE = 'gapless-notice';

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? 'error' : '';
  }

  function post(path, body) {
    return fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (response) {
      if (response.status === 204) { return {}; }
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (!response.ok) {
          throw new Error(json.error || ('HTTP ' + response.status));
        }
        return json;
      });
    });
  }

  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }

  function summary(result) {
    var text = 'Scan found ' + plural(result.found, 'gap');
    if (result.healed) {
      text += '; healing ' + plural(result.healed.gaps || 0, 'gap') + ' in run ' + result.healed.run_id;
    }
    if (result.alerted) { text += '; alerted ' + result.alerted; }
    if (result.left && result.left.length) { text += '; ' + result.left.length + ' left (too old or failing: use "Heal old gaps too")'; }
    return text + '.';
  }

  var actions = {
    'scan': { body: {}, doing: 'Scanning…' },
    'heal': { body: { heal: true }, doing: 'Scanning and healing…' },
    'heal-old': { body: { heal: true, include_old: true }, doing: 'Scanning and healing every gap…',
      confirm: 'Heal every gap, old ones included?' }
  };

  var buttons = document.querySelectorAll('button[data-action]');
  Array.prototype.forEach.call(buttons, function (button) {
    button.addEventListener('click', function () {
      var name = button.getAttribute('data-action');
      if (name === 'logout') {
        post('/logout').then(function () { window.location.assign('/'); },
          function (error) { say('Log out failed: ' + error.message, true); });
        return;
      }
      var action = actions[name];
      if (action.confirm && !window.confirm(action.confirm)) { return; }
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
      say(action.doing, false);
      post('/scan-gaps', action.body).then(function (result) {
        var text = summary(result);
        say(text, false);
        status.setAttribute('data-done', name);
        try { window.sessionStorage.setItem(NOTICE, text); } catch (e) { /* private mode */ }
        window.setTimeout(function () { window.location.reload(); }, 800);
      }, function (error) {
        say(error.message, true);
        Array.prototype.forEach.call(buttons, function (b) {
          b.disabled = b.hasAttribute('title') && b.getAttribute('title').indexOf('admin') >= 0;
        });
      });
    });
  });

  try {
    var notice = window.sessionStorage.getItem(NOTICE);
    if (notice) {
      window.sessionStorage.removeItem(NOTICE);
      say(notice, false);
    }
  } catch (e) { /* private mode */ }

  // Live progress: the runs table again every 2 s while a run goes, every 15 s otherwise.
  var section = document.getElementById('runs');
  function refresh() {
    fetch('/ui/runs', { credentials: 'same-origin' }).then(function (response) {
      if (!response.ok) { throw new Error('HTTP ' + response.status); }
      return response.text();
    }).then(function (html) {
      section.innerHTML = html;
      schedule();
    }, function () { schedule(); });
  }
  function schedule() {
    var body = document.getElementById('runs-body');
    var running = body && body.getAttribute('data-running') === 'true';
    window.setTimeout(refresh, running ? 2000 : 15000);
  }
  if (section) { schedule(); }
}());
