package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/secret"
)

// TestHammer runs Get, Use, Put, Remove, Purge and clock jumps from several
// goroutines (under -race in CI). Every key Use hands out must be live, and
// after Close every key the cache was ever given must be zero.
func TestHammer(t *testing.T) {
	const (
		workers    = 8
		iterations = 2000
	)
	var ring keyRing
	clock := newClock()
	c := New(Config{Size: 3, TTL: time.Minute, MaxStale: time.Minute, StaleRetry: time.Second, Now: clock.Now},
		func(ctx context.Context, id string) (*secret.Bytes, error) {
			if rand.IntN(5) == 0 {
				return nil, errOutage
			}
			return ring.New(t), nil
		})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for i := range iterations {
				id := fmt.Sprintf("mk%d", r.IntN(4))
				var err error
				switch op := r.IntN(100); {
				case op < 60:
					live := false
					if _, err = c.Use(ctx, id, func(key []byte) { live = len(key) == 32 && !isZero(key) }); err == nil && !live {
						err = errors.New("Use handed out a wiped key")
					}
				case op < 75:
					var k *secret.Bytes
					if k, err = c.Get(ctx, id); err == nil {
						// A lent key may be wiped by now; it must then read as empty.
						if b := k.Bytes(); b != nil && isZero(b) {
							err = errors.New("Bytes returned zeros instead of nil for a wiped key")
						}
					}
				case op < 85:
					err = c.Put(id, ring.New(t))
				case op < 90:
					c.Remove(id)
				case op < 93:
					c.Purge()
				default:
					clock.Advance(time.Duration(r.IntN(90)) * time.Second)
				}
				if err != nil && !expected(err) {
					errc <- fmt.Errorf("worker %d op %d on %s: %w", w, i, id, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	c.Close()
	keys := ring.All()
	if len(keys) < workers*iterations/10 {
		t.Fatalf("only %d keys were made; the hammer did not hammer", len(keys))
	}
	for i, k := range keys {
		if !k.Wiped() || !isZero(k.Raw()) {
			t.Errorf("key %d of %d not wiped after Close", i, len(keys))
		}
	}
	s := c.Stats()
	if s.Evictions != uint64(len(keys)) {
		t.Errorf("Stats().Evictions = %d, want %d (every key made, wiped once)", s.Evictions, len(keys))
	}
	t.Logf("keys made %d, stats %+v", len(keys), s)
}

// expected lists the errors the hammer provokes on purpose.
func expected(err error) bool {
	return errors.Is(err, ErrPurged) || errors.Is(err, ErrWiped) || kek.KindOf(err).IsOutage()
}
