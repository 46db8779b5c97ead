package telemetry

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// OtherMethod stands for every gRPC method name the server does not serve.
const OtherMethod = "_OTHER"

// Methods is the set of gRPC methods a server serves. Fill it with Set once
// the services are registered, before serving. It is safe for concurrent use.
type Methods struct {
	set atomic.Pointer[map[string]bool]
}

// Set records the methods of every service in info (grpc.Server.GetServiceInfo).
func (m *Methods) Set(info map[string]grpc.ServiceInfo) {
	s := make(map[string]bool)
	for svc, si := range info {
		for _, md := range si.Methods {
			s["/"+svc+"/"+md.Name] = true
		}
	}
	m.set.Store(&s)
}

// Has reports whether fullMethod ("/pkg.Service/Method") is served. A nil
// or unset Methods knows no method.
func (m *Methods) Has(fullMethod string) bool {
	if m == nil {
		return false
	}
	s := m.set.Load()
	return s != nil && (*s)[fullMethod]
}

// methodNormalizer renames unknown methods before otelgrpc sees them:
// otelgrpc uses the method name as a metric attribute as it comes.
type methodNormalizer struct {
	stats.Handler
	known *Methods
}

func (h methodNormalizer) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if !h.known.Has(info.FullMethodName) {
		cp := *info
		cp.FullMethodName = "/" + OtherMethod
		info = &cp
	}
	return h.Handler.TagRPC(ctx, info)
}
