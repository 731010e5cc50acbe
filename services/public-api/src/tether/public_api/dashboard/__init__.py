"""The web dashboard the public API serves on its own HTTP port (``--dashboard-addr``, 127.0.0.1:8084).

Read-only, and backed by the public API itself: every number comes from a call to the gRPC service
``tether.public.v1.Api`` over a channel to this process' own gRPC listener, the calls the ``tether`` CLI
makes, so the dashboard shows what ``tether stat -o json`` shows and goes through the same authorisation.

* :mod:`.http`: the HTTP/1.1 server (h11's sans-IO state machine under a thin asyncio adapter, as the admin
  listener), with async handlers and streamed responses (server-sent events).
* :mod:`.security`: the Host check (DNS rebinding), the same-origin check (CSRF) and the response headers
  (a strict Content-Security-Policy, nosniff, frame denial).
* :mod:`.views`: the API's answers as the JSON the pages read.
* :mod:`.taps`: live taps: a supervised task per tap consumes the gRPC Tap stream, an event stream
  (``text/event-stream``) carries it to the browser, and stopping it cancels the gRPC call.
* :mod:`.history`: the last ten minutes of 10-second windows per workload, sampled through StatSummary.
* :mod:`.app`: the routes and the :class:`~.app.Dashboard` the service starts.

The page is static: ``static/index.html``, ``dashboard.css`` and ``dashboard.js`` (no inline script or style;
every string goes into the page as text, never as markup) are package data, served by the component itself.

Kept free of imports: the configuration imports :mod:`.security` to validate its options.
"""
