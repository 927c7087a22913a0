"""nginx's http module: server, location, static files, rewrite, reverse proxy (docs/http.md)."""
