"""The dashboard's pages, one module each: ``PATH``, ``NAME``, ``ORDER``, ``layout(**query)``
and ``register_callbacks(app, state)``. :func:`app.dashboard.create_app` registers them with
``dash.register_page``; component ids carry the page's prefix (``patterns-n``, ``heads-layer``).
Pages never import the app module."""
