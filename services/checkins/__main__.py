"""`python -m services.checkins`: run the check-in service."""

from services.checkins.main import CheckinsSettings, create_app
from shared.serve import serve

if __name__ == "__main__":
    serve(CheckinsSettings, create_app)
