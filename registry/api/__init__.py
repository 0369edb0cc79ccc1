"""HTTP routes of the registry, one module per resource; ``registry.app.create_app`` mounts them."""
