package broker

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	last := b.checks.latest()
	if !last.at.IsZero() {
		resp.LastValidation = timestamppb.New(last.at)
		resp.LastValidationOk = last.ok
	}
	loaded := make(map[string]bool)
	for _, id := range b.cache.Keys() {
		loaded[id] = true
	}
	for _, k := range b.store.Keys() {
		if k.Object != nil {
			continue // KMIP objects: 'keybroker kmip list'
		}
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
	partial := false
	for _, a := range last.alerts {
		resp.Alerts = append(resp.Alerts, &keybrokerv1.Alert{Code: a.code, Message: a.message, Since: timestamppb.New(a.since)})
		partial = partial || a.code == "REVOCATION_PARTIAL"
	}
	if rr, ok := b.wrapper.(RegionReporter); ok {
		for _, r := range rr.RegionStatus() {
			resp.Regions = append(resp.Regions, regionToProto(r))
		}
		// The failover wrapper also sees it between checks, from calls.
		if !partial && rr.PartialRevocation() {
			resp.Alerts = append(resp.Alerts, &keybrokerv1.Alert{
				Code:    "REVOCATION_PARTIAL",
				Message: "access to the customer key is revoked in some regions but not all: check the key's access policies and RBAC in every region",
			})
		}
	}
	resp.Alerts = append(resp.Alerts, b.rotationAlertsProto()...)
	return resp, nil
}

// WatchKeyState implements keybroker.v1.KeyBrokerService: the current state
// first, then every change, until the client goes away or Shutdown.
func (b *Broker) WatchKeyState(_ *keybrokerv1.WatchKeyStateRequest, stream grpc.ServerStreamingServer[keybrokerv1.WatchKeyStateResponse]) error {
	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.hub.done:
			return status.Error(codes.Unavailable, "the broker is shutting down: reconnect to watch its next instance")
		case ev := <-w.ch:
			if err := stream.Send(&keybrokerv1.WatchKeyStateResponse{Event: eventToProto(ev)}); err != nil {
				return err
			}
		}
	}
}

// Revalidate implements keybroker.v1.KeyBrokerService: the "Try Again".
func (b *Broker) Revalidate(ctx context.Context, _ *keybrokerv1.RevalidateRequest) (*keybrokerv1.RevalidateResponse, error) {
	seen := b.rewrapsSeen()
	ev, err := b.Check(ctx)
	resp := &keybrokerv1.RevalidateResponse{State: stateToProto(ev.State), Reason: ev.Reason, Ok: err == nil}
	if err != nil && kek.KindOf(err) == kek.KindUnknown {
		// Not a vault answer: a deadline, a cancel, or a bug.
		return nil, b.toStatus(ctx, "Revalidate", err)
	}
	if err == nil && b.rewrapsSeen() != seen {
		// The check saw a new customer key version: rewrap now, so that the
		// operator who rotated it and asks again leaves with it done.
		if rep, rerr := b.RotateCMK(ctx); rerr != nil {
			b.log.ErrorContext(ctx, "rewrapping the master keys under the new customer key version failed; the scheduler retries", "err", rerr, "rewrapped", len(rep.Rewrapped))
		} else {
			b.log.InfoContext(ctx, "master keys rewrapped under the new customer key version", "cmk", rep.Targets, "versions", len(rep.Rewrapped))
		}
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
