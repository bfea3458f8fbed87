"""`python -m services.checkins`: run the check-in service.

`python -m services.checkins relay-rewind --to N` publishes its events after N again
(docs/operations.md).
"""

from services.checkins.application import CheckinsApplication
from services.checkins.main import CheckinsSettings, create_app
from shared.serve import main

if __name__ == "__main__":
    main(CheckinsSettings, create_app, CheckinsApplication)
