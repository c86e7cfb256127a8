package xds

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
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
