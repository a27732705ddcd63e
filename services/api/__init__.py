"""The v1 HTTP API (../shared/design/API.md): ``create_app(settings)`` builds it; ``synctalk api`` serves it."""
