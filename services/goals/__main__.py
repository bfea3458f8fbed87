"""`python -m services.goals`: run the goals service.

`python -m services.goals relay-rewind --to N` publishes its events after N again
(docs/operations.md).
"""

from services.goals.application import GoalsApplication
from services.goals.main import GoalsSettings, create_app
from shared.serve import main

if __name__ == "__main__":
    main(GoalsSettings, create_app, GoalsApplication)
