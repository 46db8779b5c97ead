package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"sync"
	"time"
)

// reloader serves a certificate and re-reads its files when they change.
// It is safe for concurrent use: GetCertificate runs on every handshake.
type reloader struct {
	certFile, keyFile string
	usage             x509.ExtKeyUsage
	now               func() time.Time
	log               *slog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	certStat os.FileInfo // the files as last loaded, or last tried
	keyStat  os.FileInfo
}

func newReloader(certFile, keyFile string, usage x509.ExtKeyUsage, now func() time.Time, log *slog.Logger) (*reloader, error) {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &reloader{certFile: certFile, keyFile: keyFile, usage: usage, now: now, log: log}
	// Stat before reading, so a change racing the first load is seen later.
	r.certStat, _ = os.Stat(certFile)
	r.keyStat, _ = os.Stat(keyFile)
	cert, err := loadKeyPair(certFile, keyFile, usage, now())
	if err != nil {
		return nil, err
	}
	r.cert = cert
	return r, nil
}

func (r *reloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cs, errC := os.Stat(r.certFile)
	ks, errK := os.Stat(r.keyFile)
	r.mu.Lock()
	defer r.mu.Unlock()
	if errC != nil || errK != nil {
		// Mid-replacement or removed: keep serving what we have.
		return r.cert, nil
	}
	if sameFile(cs, r.certStat) && sameFile(ks, r.keyStat) {
		return r.cert, nil
	}
	// Remember the attempt even when it fails, so a bad file is reported
	// once and not re-read on every handshake; the next change retries.
	r.certStat, r.keyStat = cs, ks
	cert, err := loadKeyPair(r.certFile, r.keyFile, r.usage, r.now())
	if err != nil {
		r.log.Warn("mtls: server certificate changed but does not load; still serving the previous one",
			"cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		return r.cert, nil
	}
	r.cert = cert
	r.log.Info("mtls: server certificate reloaded", "cert_file", r.certFile,
		"serial", cert.Leaf.SerialNumber.Text(16), "not_after", cert.Leaf.NotAfter)
	return cert, nil
}

// sameFile reports whether a file is unchanged: same inode (atomic renames
// make a new one), size and modification time.
func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
