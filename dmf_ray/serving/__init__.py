"""The pieces of ``dmf_ray.serve``: typed app arguments and the HTTP API's bodies."""
