"""`python -m services.projections`: run the projections service.

`python -m services.projections rebuild` rebuilds the views from the beginning of the stream
while the service keeps answering from the live ones (see `rebuild.py`).
"""

import asyncio
import sys

from services.projections.main import ProjectionsApplication, ProjectionsSettings, create_app
from services.projections.rebuild import rebuild
from shared.collector import tune_collector
from shared.serve import serve
from shared.sql import Database
from shared.store import store_env


def _rebuild() -> None:
    settings = ProjectionsSettings()
    app = ProjectionsApplication(store_env(settings))
    tune_collector()
    try:
        generation = asyncio.run(rebuild(settings, Database(app)))
    finally:
        app.close()
    print(f"views rebuilt: generation {generation} is live")


if __name__ == "__main__":
    if sys.argv[1:] == ["rebuild"]:
        _rebuild()
    elif sys.argv[1:]:
        sys.exit("usage: python -m services.projections [rebuild]")
    else:
        serve(ProjectionsSettings, create_app)
