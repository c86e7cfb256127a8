package xds

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ambit-mesh/ambit/identity"
)

type fakeAuth struct{ err error }

func (f fakeAuth) NodeOf(context.Context) (string, error) { return "node1", f.err }

type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }

func TestStreamAuth(t *testing.T) {
	refused := errors.New("not a node proxy")
	tests := []struct {
		method  string
		auth    fakeAuth
		wantErr error
		called  bool
	}{
		{adsPrefix + "DeltaAggregatedResources", fakeAuth{}, nil, true},
		{adsPrefix + "DeltaAggregatedResources", fakeAuth{refused}, refused, false},
		{adsPrefix + "StreamAggregatedResources", fakeAuth{refused}, refused, false},
		{"/other.Service/Stream", fakeAuth{refused}, nil, true},
	}
	for _, tc := range tests {
		called := false
		err := StreamAuth(tc.auth)(nil, fakeStream{}, &grpc.StreamServerInfo{FullMethod: tc.method}, func(any, grpc.ServerStream) error {
			called = true
			return nil
		})
		if !errors.Is(err, tc.wantErr) || called != tc.called {
			t.Errorf("%s with %v: err %v called %v", tc.method, tc.auth.err, err, called)
		}
	}
}

type fakeStreamAuth struct {
	id      identity.SPIFFE
	byToken bool
	err     error
}

func (f fakeStreamAuth) AuthenticateStream(context.Context) (identity.SPIFFE, bool, error) {
	return f.id, f.byToken, f.err
}

// recvStream yields one queued request, then EOF.
type recvStream struct {
	grpc.ServerStream
	reqs []proto.Message
}

func (recvStream) Context() context.Context { return context.Background() }
func (s *recvStream) RecvMsg(m any) error {
	if len(s.reqs) == 0 {
		return io.EOF
	}
	proto.Merge(m.(proto.Message), s.reqs[0])
	s.reqs = s.reqs[1:]
	return nil
}

func TestStreamAuthIdentity(t *testing.T) {
	echo := identity.SPIFFE{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "echo"}
	delta := func(ns, sa string) proto.Message {
		fields := map[string]any{}
		if ns != "" {
			fields[MetadataNamespace] = ns
		}
		if sa != "" {
			fields[MetadataServiceAccount] = sa
		}
		md, _ := structpb.NewStruct(fields)
		return &discovery.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "waypoint~10.0.0.1~wp-1.demo~demo.svc.cluster.local", Metadata: md}, TypeUrl: AddressType}
	}
	refused := status.Error(codes.Unauthenticated, "token refused")
	tests := []struct {
		name     string
		method   string
		auth     fakeStreamAuth
		first    proto.Message
		wantCode codes.Code
		wantMsg  string
		called   bool
	}{
		{"token, matching metadata", "DeltaAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, delta("demo", "echo"), codes.OK, "", true},
		{"token, no metadata", "DeltaAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, delta("", ""), codes.OK, "", true},
		{"token, other namespace", "DeltaAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, delta("prod", "echo"), codes.PermissionDenied, `says namespace "prod"`, false},
		{"token, other service account", "DeltaAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, delta("demo", "db"), codes.PermissionDenied, `says service account "db"`, false},
		{"token, SotW", "StreamAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, &discovery.DiscoveryRequest{Node: &corev3.Node{Id: "x"}}, codes.OK, "", true},
		{"node credential: metadata not checked", "DeltaAggregatedResources", fakeStreamAuth{id: echo}, delta("prod", "x"), codes.OK, "", true},
		{"refused", "DeltaAggregatedResources", fakeStreamAuth{err: refused}, delta("demo", "echo"), codes.Unauthenticated, "token refused", false},
		{"stream ends before a request", "DeltaAggregatedResources", fakeStreamAuth{id: echo, byToken: true}, nil, codes.Unknown, "EOF", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &recvStream{}
			if tc.first != nil {
				st.reqs = []proto.Message{tc.first}
			}
			called := false
			err := StreamAuthIdentity(tc.auth)(nil, st, &grpc.StreamServerInfo{FullMethod: adsPrefix + tc.method}, func(_ any, ss grpc.ServerStream) error {
				called = true
				got := tc.first.ProtoReflect().New().Interface()
				if err := ss.RecvMsg(got); err != nil {
					return err
				}
				if !proto.Equal(got, tc.first) {
					t.Errorf("handler got %v, want the first request %v", got, tc.first)
				}
				if err := ss.RecvMsg(got); err != io.EOF {
					t.Errorf("second RecvMsg: %v, want EOF from the stream", err)
				}
				return nil
			})
			if status.Code(err) != tc.wantCode || (tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg)) || called != tc.called {
				t.Errorf("err %v (want %v %q), called %v", err, tc.wantCode, tc.wantMsg, called)
			}
		})
	}
	// Other services pass untouched.
	called := false
	_ = StreamAuthIdentity(fakeStreamAuth{err: refused})(nil, &recvStream{}, &grpc.StreamServerInfo{FullMethod: "/other.Service/Stream"}, func(any, grpc.ServerStream) error { called = true; return nil })
	if !called {
		t.Error("another service was intercepted")
	}
}
