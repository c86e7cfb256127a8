package xds

import (
	"context"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/identity"
)

// NodeAuthenticator says which node a caller is, or refuses it with a gRPC
// status (see ca.Server.NodeOf).
type NodeAuthenticator interface {
	NodeOf(ctx context.Context) (string, error)
}

// StreamAuthenticator admits a discovery stream's caller or refuses it with
// a gRPC status (see ca.Server.AuthenticateStream). byToken says the caller
// proved id with a service-account token: its node metadata must then
// agree with id, as istiod checks.
type StreamAuthenticator interface {
	AuthenticateStream(ctx context.Context) (id identity.SPIFFE, byToken bool, err error)
}

// adsPrefix is the gRPC service of aggregated discovery.
const adsPrefix = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"

// Node metadata keys checked against a token's identity (istiod's
// NAMESPACE and SERVICE_ACCOUNT).
const (
	MetadataNamespace      = "NAMESPACE"
	MetadataServiceAccount = "SERVICE_ACCOUNT"
)

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

// StreamAuthIdentity admits discovery streams only from callers a
// authenticates. For a caller authenticated by token, the stream's first
// request must carry node metadata whose NAMESPACE and SERVICE_ACCOUNT (when
// set) are the token's, as istiod's identity check; otherwise the stream is
// refused with PermissionDenied before the discovery server sees it.
func StreamAuthIdentity(a StreamAuthenticator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !strings.HasPrefix(info.FullMethod, adsPrefix) {
			return handler(srv, ss)
		}
		id, byToken, err := a.AuthenticateStream(ss.Context())
		if err != nil {
			return err
		}
		if !byToken {
			return handler(srv, ss)
		}
		var first proto.Message
		switch strings.TrimPrefix(info.FullMethod, adsPrefix) {
		case "DeltaAggregatedResources":
			first = &discovery.DeltaDiscoveryRequest{}
		case "StreamAggregatedResources":
			first = &discovery.DiscoveryRequest{}
		default:
			return status.Errorf(codes.Unimplemented, "unknown discovery method %s", info.FullMethod)
		}
		if err := ss.RecvMsg(first); err != nil {
			return err
		}
		if err := checkNodeIdentity(first.(interface{ GetNode() *corev3.Node }).GetNode(), id); err != nil {
			return err
		}
		return handler(srv, &replayStream{ServerStream: ss, first: first})
	}
}

// checkNodeIdentity refuses node metadata that names another namespace or
// service account than id.
func checkNodeIdentity(node *corev3.Node, id identity.SPIFFE) error {
	md := node.GetMetadata().GetFields()
	if ns := md[MetadataNamespace].GetStringValue(); ns != "" && ns != id.Namespace {
		return status.Errorf(codes.PermissionDenied, "authorization failed: node %q says namespace %q, but its token is for %s", node.GetId(), ns, id)
	}
	if sa := md[MetadataServiceAccount].GetStringValue(); sa != "" && sa != id.ServiceAccount {
		return status.Errorf(codes.PermissionDenied, "authorization failed: node %q says service account %q, but its token is for %s", node.GetId(), sa, id)
	}
	return nil
}

// replayStream hands the discovery server the request the interceptor
// already read, then reads on.
type replayStream struct {
	grpc.ServerStream
	first proto.Message
}

func (s *replayStream) RecvMsg(m any) error {
	if s.first == nil {
		return s.ServerStream.RecvMsg(m)
	}
	first := s.first
	s.first = nil
	dst, ok := m.(proto.Message)
	if !ok || dst.ProtoReflect().Descriptor() != first.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "discovery stream: cannot replay %T into %T", first, m)
	}
	proto.Reset(dst)
	proto.Merge(dst, first)
	return nil
}
