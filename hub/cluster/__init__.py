"""Several hubs serving one fleet (docs/cluster.md): the hub's own identity, the
cluster's hub list, peer links between hubs, and routes to nodes held elsewhere."""
