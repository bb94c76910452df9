"""Built-in plugins. Every public module here is registered as a plugin (sorted by name)
by :func:`cptcore.make_plugin_manager`, through exactly the hooks a third-party package
uses. Modules must stay cheap to import: heavy libraries are imported inside functions.
"""
