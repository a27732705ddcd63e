"""Network address checks shared by the services and the workers."""
