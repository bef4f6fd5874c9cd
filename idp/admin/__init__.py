"""Administration: one service layer (idp.admin.service) under the command line and the admin REST API."""
