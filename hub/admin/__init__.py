"""tctl's side in the hub: the admin.* RPC methods and the hub's own admin identity."""
