"""`python -m services.reviews`: run the review service."""

from services.reviews.main import ReviewsSettings, create_app
from shared.serve import serve

if __name__ == "__main__":
    serve(ReviewsSettings, create_app)
