package xds

import (
	"context"
	"strings"

	"google.golang.org/grpc"
)

// NodeAuthenticator says which node a caller is, or refuses it with a gRPC
// status (see ca.Server.NodeOf).
type NodeAuthenticator interface {
	NodeOf(ctx context.Context) (string, error)
}

// adsPrefix is the gRPC service of aggregated discovery.
const adsPrefix = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"

// StreamAuth admits discovery streams only from callers a authenticates;
// other services pass through untouched (they authenticate themselves).
func StreamAuth(a NodeAuthenticator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, adsPrefix) {
			if _, err := a.NodeOf(ss.Context()); err != nil {
				return err
			}
		}
		return handler(srv, ss)
	}
}
