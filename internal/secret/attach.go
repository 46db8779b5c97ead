package secret

// Attachment is state derived from a key, such as an AEAD's key schedule,
// that lives and dies with it: Bytes.Wipe wipes it too.
type Attachment interface{ Wipe() }

// UseAttached calls f with the attachment made from the key by derive, which
// runs once, on first use, with the key bytes in place (derive must not keep
// them). f runs under the same read lock as Use, so Wipe never overlaps it.
// It reports false, without calling f, once the key is wiped, and derive's
// error when derive fails (nothing is attached then).
func (s *Bytes) UseAttached(derive func(key []byte) (Attachment, error), f func(Attachment)) (bool, error) {
	s.mu.RLock()
	if s.wiped {
		s.mu.RUnlock()
		return false, nil
	}
	if a := s.attached; a != nil {
		f(a)
		s.mu.RUnlock()
		return true, nil
	}
	s.mu.RUnlock()

	s.mu.Lock()
	if s.wiped {
		s.mu.Unlock()
		return false, nil
	}
	if s.attached == nil {
		a, err := derive(s.b)
		if err != nil {
			s.mu.Unlock()
			return false, err
		}
		s.attached = a
	}
	s.mu.Unlock()
	return s.UseAttached(derive, f)
}
