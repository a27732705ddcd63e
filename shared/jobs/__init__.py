"""Jobs (subjects and renders) in the database: their life (``lifecycle``) and their JSON (``views``)."""
