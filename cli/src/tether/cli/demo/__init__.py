"""``tether demo``: a small meshed gRPC application (after Linkerd's emojivoto) on the local mesh."""
