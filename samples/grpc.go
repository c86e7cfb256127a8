package samples

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// The gRPC Echo service, written by hand instead of generated: its request
// and reply are google.protobuf.Struct, so no .proto file is needed.
const (
	echoServiceName = "ambit.samples.Echo"
	// EchoMethod is the full gRPC method name of the echo server's Echo RPC.
	EchoMethod = "/" + echoServiceName + "/Echo"
)

// echoHandler is what the service descriptor dispatches to.
type echoHandler interface {
	grpcEcho(ctx context.Context, in *structpb.Struct) (*structpb.Struct, error)
}

var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: echoServiceName,
	HandlerType: (*echoHandler)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := &structpb.Struct{}
			if err := dec(in); err != nil {
				return nil, err
			}
			h, ok := srv.(echoHandler)
			if !ok {
				return nil, status.Errorf(codes.Internal, "echo service registered with a %T", srv)
			}
			if interceptor == nil {
				return h.grpcEcho(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: EchoMethod}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				in, ok := req.(*structpb.Struct)
				if !ok {
					return nil, status.Errorf(codes.Internal, "echo request is a %T", req)
				}
				return h.grpcEcho(ctx, in)
			})
		},
	}},
	Metadata: "ambit/samples/echo",
}

// grpcEcho answers Echo: the reply reports what the server saw, like the
// HTTP echo. The request's content is only measured.
func (s *EchoServer) grpcEcho(ctx context.Context, in *structpb.Struct) (*structpb.Struct, error) {
	rep := &EchoReply{Pod: s.Name, Proto: "gRPC", Method: "POST", URL: EchoMethod,
		BodyBytes: int64(proto.Size(in)), Headers: map[string][]string{}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		rep.Source = p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, v := range md {
			rep.Headers[k] = v
		}
		if a := md.Get(":authority"); len(a) > 0 {
			rep.Host = a[0]
		}
	}
	s.log().Info("request", "proto", "gRPC", "method", EchoMethod, "host", rep.Host, "source", rep.Source, "code", "OK")
	out, err := rep.toStruct()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding reply: %v", err)
	}
	return out, nil
}

// toStruct converts the reply into the Struct the Echo RPC returns.
func (r *EchoReply) toStruct() (*structpb.Struct, error) {
	h := make(map[string]any, len(r.Headers))
	for k, v := range r.Headers {
		vs := make([]any, len(v))
		for i := range v {
			vs[i] = v[i]
		}
		h[k] = vs
	}
	st, err := structpb.NewStruct(map[string]any{
		"pod": r.Pod, "source": r.Source, "proto": r.Proto, "method": r.Method, "url": r.URL,
		"host": r.Host, "bodyBytes": float64(r.BodyBytes), "headers": h,
	})
	if err != nil {
		return nil, fmt.Errorf("echo reply as Struct: %w", err)
	}
	return st, nil
}

// EchoReplyFromStruct reads the Struct an Echo RPC returned. Missing or
// mistyped fields stay empty.
func EchoReplyFromStruct(st *structpb.Struct) *EchoReply {
	f := st.GetFields()
	str := func(k string) string { return f[k].GetStringValue() }
	r := &EchoReply{Pod: str("pod"), Source: str("source"), Proto: str("proto"), Method: str("method"),
		URL: str("url"), Host: str("host"), BodyBytes: int64(f["bodyBytes"].GetNumberValue()),
		Headers: map[string][]string{}}
	for k, v := range f["headers"].GetStructValue().GetFields() {
		for _, e := range v.GetListValue().GetValues() {
			r.Headers[k] = append(r.Headers[k], e.GetStringValue())
		}
	}
	return r
}
