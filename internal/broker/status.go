package broker

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keybroker/keybroker/internal/kek"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// checkTimeout bounds a validity check started by the broker itself.
const checkTimeout = 30 * time.Second

// GetStatus implements keybroker.v1.KeyBrokerService.
func (b *Broker) GetStatus(ctx context.Context, _ *keybrokerv1.GetStatusRequest) (*keybrokerv1.GetStatusResponse, error) {
	cur := b.hub.current()
	resp := &keybrokerv1.GetStatusResponse{
		State:  stateToProto(cur.State),
		Reason: cur.Reason,
		Since:  timestamppb.New(cur.Time),
	}
	b.checkMu.Lock()
	last := b.lastCheck
	b.checkMu.Unlock()
	if !last.at.IsZero() {
		resp.LastValidation = timestamppb.New(last.at)
		resp.LastValidationOk = last.ok
	}
	loaded := make(map[string]bool)
	for _, id := range b.cache.Keys() {
		loaded[id] = true
	}
	for _, k := range b.store.Keys() {
		ks := &keybrokerv1.KeyStatus{Name: k.Name, Id: k.ID, State: string(k.State)}
		cmks := make(map[string]bool)
		for _, v := range k.Versions {
			ks.Versions = append(ks.Versions, v.ID)
			for _, c := range v.Copies {
				if !cmks[c.KeyID] {
					cmks[c.KeyID] = true
					ks.CmkKeyIds = append(ks.CmkKeyIds, c.KeyID)
				}
			}
		}
		if v, ok := k.Current(); ok {
			ks.CurrentVersion = v.ID
			ks.CurrentVersionCreated = timestamppb.New(v.Created)
			ks.Loaded = loaded[v.ID]
		}
		resp.Keys = append(resp.Keys, ks)
	}
	if rr, ok := b.wrapper.(RegionReporter); ok {
		for _, r := range rr.RegionStatus() {
			resp.Regions = append(resp.Regions, regionToProto(r))
		}
		if rr.PartialRevocation() {
			resp.Alerts = append(resp.Alerts, &keybrokerv1.Alert{
				Code:    "REVOCATION_PARTIAL",
				Message: "access to the customer key is revoked in some regions but not all: check the key's access policies and RBAC in every region",
			})
		}
	}
	return resp, nil
}

// WatchKeyState implements keybroker.v1.KeyBrokerService: the current state
// first, then every change, until the client goes away.
func (b *Broker) WatchKeyState(_ *keybrokerv1.WatchKeyStateRequest, stream grpc.ServerStreamingServer[keybrokerv1.WatchKeyStateResponse]) error {
	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-w.ch:
			if err := stream.Send(&keybrokerv1.WatchKeyStateResponse{Event: eventToProto(ev)}); err != nil {
				return err
			}
		}
	}
}

// Revalidate implements keybroker.v1.KeyBrokerService: the "Try Again".
func (b *Broker) Revalidate(ctx context.Context, _ *keybrokerv1.RevalidateRequest) (*keybrokerv1.RevalidateResponse, error) {
	ev, err := b.Check(ctx)
	resp := &keybrokerv1.RevalidateResponse{State: stateToProto(ev.State), Reason: ev.Reason, Ok: err == nil}
	if err != nil && kek.KindOf(err) == kek.KindUnknown {
		// Not a vault answer: a deadline, a cancel, or a bug.
		return nil, b.toStatus(ctx, "Revalidate", err)
	}
	return resp, nil
}

func stateToProto(s State) keybrokerv1.State {
	switch s {
	case StateServing:
		return keybrokerv1.State_STATE_SERVING
	case StateDegraded:
		return keybrokerv1.State_STATE_DEGRADED
	case StatePaused:
		return keybrokerv1.State_STATE_PAUSED
	}
	return keybrokerv1.State_STATE_UNSPECIFIED
}

func eventToProto(ev Event) *keybrokerv1.KeyStateEvent {
	kinds := map[EventKind]keybrokerv1.KeyStateEvent_Kind{
		EventCurrent:  keybrokerv1.KeyStateEvent_KIND_CURRENT,
		EventServing:  keybrokerv1.KeyStateEvent_KIND_SERVING,
		EventDegraded: keybrokerv1.KeyStateEvent_KIND_DEGRADED,
		EventPause:    keybrokerv1.KeyStateEvent_KIND_PAUSE,
		EventResumed:  keybrokerv1.KeyStateEvent_KIND_RESUMED,
	}
	return &keybrokerv1.KeyStateEvent{
		Kind:   kinds[ev.Kind],
		State:  stateToProto(ev.State),
		Reason: ev.Reason,
		Time:   timestamppb.New(ev.Time),
	}
}

func regionToProto(r RegionStatus) *keybrokerv1.RegionStatus {
	rs := &keybrokerv1.RegionStatus{
		Name:      r.Name,
		VaultUrl:  r.VaultURL,
		CmkKeyId:  r.KeyID,
		Healthy:   r.Healthy,
		LastError: r.LastError,
		LatencyMs: float64(r.Latency) / float64(time.Millisecond),
		Preferred: r.Preferred,
		Active:    r.Active,
	}
	if r.LastErrorKind != kek.KindUnknown || r.LastError != "" {
		rs.LastErrorKind = r.LastErrorKind.String()
	}
	return rs
}
