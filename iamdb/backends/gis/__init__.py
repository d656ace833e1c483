"""GeoDjango backends: ``iamdb.backends.gis.postgis`` and ``iamdb.backends.gis.mysql``.

Nothing here imports Django's GIS modules: they define models, so they can only be
imported once the app registry is ready. Django imports each ``base`` module when
it loads the backend, as it does for its own GIS backends.
"""
