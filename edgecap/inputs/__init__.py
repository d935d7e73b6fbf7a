"""What a request brings in: ``images`` decodes, guards and budgets a picture (``decoding``
bounds the decode, ``base64text`` reads inline bytes); ``netguard`` decides which URLs may be
reached and ``fetching`` fetches and delivers within bounds."""
