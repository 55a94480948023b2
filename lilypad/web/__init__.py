"""The web side: ``lilypad serve`` (a local HTTP API and dashboard over :class:`lilypad.Client`,
:mod:`lilypad.web.serve`) and the network view it shares with the solver's read-only dashboard
(:mod:`lilypad.web.network`). Pages are server-rendered Jinja templates with a little plain
JavaScript (``static/app.js``): nothing to build."""
