"""What a request brings in: ``images`` decodes, guards and budgets a picture; ``netguard`` decides
which URLs may be fetched and fetches them within bounds."""
