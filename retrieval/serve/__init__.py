"""`retrieval serve`: a REST API and a web page over one index directory (FastAPI on uvicorn).

Modules: `config` (options, secrets), `live` (the index snapshot, reloaded on change), `service`
(what the routes do, over `retrieval.search` and `indexer.summary`), `api` and `pages` (routers),
`uploads` (bounded multipart into a private folder), `thumbnails`, `security` (token, pseudonyms),
`metrics` (Prometheus), `app` (the factory). The page is `static/` (plain HTML/CSS/JS, no CDN).
"""

from retrieval.serve.app import create_app
from retrieval.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
