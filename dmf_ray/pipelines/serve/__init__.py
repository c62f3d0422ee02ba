"""Online embedding with Ray Serve: ``app`` (the deployments, ``build_app``, ``run_server``),
``args`` (typed app arguments: the YAML's ``args:``) and ``api`` (the HTTP request/response bodies)."""
