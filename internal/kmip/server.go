// Package kmip is keybroker's KMIP front-end: KMIP 1.0-1.4 (TTLV over TLS,
// port 5696) for storage engines that speak it unmodified, such as mongod
// Enterprise, Percona Server for MongoDB and libmongocrypt. It is a thin
// edge over the broker core: it decodes requests with
// github.com/ovh/kmip-go, dispatches each operation to one handler through
// kmip-go's kmipserver.BatchExecutor, checks the caller's role, calls the
// core and maps its errors to KMIP Result Reasons in one place (errors.go).
//
// The connection loop is keybroker's own rather than kmipserver.Server's,
// so that it can enforce handshake, read and idle deadlines, a connection
// cap and a maximum message size, log through the given slog.Logger, and
// clear response buffers that carried key bytes once they are written.
//
// cmd/keybroker builds a Server with New and runs it with Serve.
package kmip

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/wipe"
)

// Defaults for the Config fields left zero.
const (
	DefaultMaxConnections   = 256
	DefaultMaxMessageSize   = 64 << 10
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReadTimeout      = 30 * time.Second
	DefaultIdleTimeout      = 2 * time.Minute
)

// Config configures a Server. It is not changed after New.
type Config struct {
	// Core is the broker core the handlers drive; required.
	Core Core
	// TLS is the server's TLS configuration (mtls.ServerTLS). New clones
	// it, requires a verified client certificate and allows TLS 1.2, which
	// the KMIP clients need; 1.3 stays preferred.
	TLS *tls.Config
	// Roles maps client identities to their roles (mtls.RoleEngine,
	// mtls.RoleAdmin), as the authorization section says.
	Roles map[string][]string
	// Logger receives the connection and request logs; nil discards them.
	Logger *slog.Logger
	// Metrics, if set, is told of every operation and connection.
	Metrics Metrics
	// Limits; zero means the Default constants.
	MaxConnections   int
	MaxMessageSize   int
	HandshakeTimeout time.Duration
	ReadTimeout      time.Duration
	IdleTimeout      time.Duration
	// Now is the clock for deadlines and Time Stamps; nil means time.Now.
	Now func() time.Time
}

// Metrics receives what the KMIP front-end measures (internal/telemetry
// implements it). Calls must return quickly. Operation names and reasons
// are KMIP's enumeration names, a bounded set ("other" for anything
// unknown).
type Metrics interface {
	// Operation starts measuring one operation (a batch item); done is
	// called once with its Result Reason, "" on success.
	Operation(ctx context.Context, op string) (_ context.Context, done func(reason string))
	// Connections adds delta to the open connections.
	Connections(delta int)
}

// Server serves KMIP on listeners. It is safe for concurrent use.
type Server struct {
	cfg   Config
	tls   *tls.Config
	log   *slog.Logger
	exec  *kmipserver.BatchExecutor
	slots chan struct{}

	mu     sync.Mutex
	lis    []net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New builds a Server; it does not listen.
func New(cfg Config) (*Server, error) {
	if cfg.Core == nil {
		return nil, errors.New("kmip: no core")
	}
	if cfg.TLS == nil {
		return nil, errors.New("kmip: no TLS configuration: KMIP is served over mutually authenticated TLS only")
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := cfg.TLS.Clone()
	t.MinVersion = tls.VersionTLS12
	t.ClientAuth = tls.RequireAndVerifyClientCert
	s := &Server{
		cfg:   cfg,
		tls:   t,
		log:   cfg.Logger,
		slots: make(chan struct{}, cfg.MaxConnections),
		conns: make(map[net.Conn]struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.exec = s.newExecutor()
	return s, nil
}

// Serve accepts connections on l until Close; it returns nil after Close
// and the accept error otherwise.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.lis = append(s.lis, l)
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("kmip: accepting connections: %w", err)
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.log.Warn("kmip: connection refused: the connection cap is reached; raise kmip.max_connections or find the client that holds connections open",
				"peer", c.RemoteAddr().String(), "max_connections", s.cfg.MaxConnections)
			c.Close()
			continue
		}
		if !s.track(c, true) {
			<-s.slots
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			defer s.track(c, false)
			s.serveConn(c)
		}()
	}
}

// track adds or removes a connection; adding fails once closed.
func (s *Server) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.conns[c] = struct{}{}
		return true
	}
	delete(s.conns, c)
	return true
}

// Close stops the listeners, closes every connection (a request being
// handled finishes first, its response is not sent) and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, l := range s.lis {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// conn is one client connection's state.
type conn struct {
	net.Conn
	caller broker.Caller
	// denied, when set, answers every request: the client has no role.
	denied string
	peer   string
}

func (s *Server) serveConn(raw net.Conn) {
	if m := s.cfg.Metrics; m != nil {
		m.Connections(1)
		defer m.Connections(-1)
	}
	defer raw.Close()
	peer := raw.RemoteAddr().String()
	tc := tls.Server(raw, s.tls)
	_ = tc.SetDeadline(s.cfg.Now().Add(s.cfg.HandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.log.Warn("kmip: TLS handshake failed; the client needs a certificate from the broker's client CA and TLS 1.2 or later", "peer", peer, "err", err)
		return
	}
	// What is written is zeroed once written (wipe.Conn), what was read
	// is zeroed once handled, and crypto/tls's own record buffers after
	// each message and at close.
	c := &conn{Conn: wipe.WrapConn(tc), peer: peer}
	s.identify(c, tc.ConnectionState())
	s.log.Debug("kmip: connection", "peer", peer, "identity", c.caller.Identity, "admin", c.caller.Admin)
	defer wipe.ClearTLSBuffers(tc)
	defer tc.Close() // sends close_notify

	for {
		buf, err := s.readMessage(c)
		if err != nil {
			// Clients that close abruptly (libmongocrypt: one operation per
			// connection) are routine; timeouts and bad frames are worth a line.
			var ne net.Error
			switch {
			case errors.Is(err, errBadFrame), errors.As(err, &ne) && ne.Timeout():
				s.log.Info("kmip: connection closed", "peer", peer, "reason", err.Error())
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
				s.log.Debug("kmip: connection closed", "peer", peer, "reason", err.Error())
			}
			if errors.Is(err, errBadFrame) {
				s.reply(c, messageError(nil, kmip.ResultReasonInvalidMessage, err.Error(), s.cfg.Now()), nil)
			}
			return
		}
		wipe.ClearTLSInput(tc)
		resp, secrets := s.handle(c, buf)
		clear(buf)
		if !s.reply(c, resp, secrets) {
			return
		}
	}
}

// identify picks the caller's identity and role from its verified chain.
func (s *Server) identify(c *conn, st tls.ConnectionState) {
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		c.denied = "client certificate required: connect with a certificate issued by the broker's client CA"
		return
	}
	ids := mtls.Identities(st.VerifiedChains[0][0])
	for _, id := range ids {
		rs := s.cfg.Roles[id]
		if slices.Contains(rs, mtls.RoleAdmin) {
			c.caller = broker.Caller{Identity: id, Admin: true}
			return
		}
		if slices.Contains(rs, mtls.RoleEngine) && c.caller.Identity == "" {
			c.caller = broker.Caller{Identity: id}
		}
	}
	if c.caller.Identity == "" {
		c.denied = fmt.Sprintf("client %v has neither the engine nor the admin role: list it under authorization in the broker's configuration", ids)
		s.log.Warn("kmip: client without a role", "peer", c.peer, "identity", ids)
	}
}

// maxBatchItems bounds the operations of one message: each may call Key
// Vault, and the clients keybroker serves send one.
const maxBatchItems = 64

// errBadFrame is a message that is not a TTLV Request Message within the
// size limit; the connection is answered once and closed.
var errBadFrame = errors.New("kmip: malformed message")

// readMessage reads one TTLV message: its 8-byte header within the idle
// timeout, the rest within the read timeout.
func (s *Server) readMessage(c *conn) ([]byte, error) {
	var hdr [8]byte
	_ = c.SetReadDeadline(s.cfg.Now().Add(s.cfg.IdleTimeout))
	if _, err := io.ReadFull(c, hdr[:1]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("idle: %w", err)
	}
	_ = c.SetReadDeadline(s.cfg.Now().Add(s.cfg.ReadTimeout))
	if _, err := io.ReadFull(c, hdr[1:]); err != nil {
		return nil, fmt.Errorf("reading a message header: %w", err)
	}
	tag := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if tag != kmip.TagRequestMessage || ttlv.Type(hdr[3]) != ttlv.TypeStructure {
		return nil, fmt.Errorf("%w: the message does not start with a Request Message structure (tag %06X, type %02X)", errBadFrame, tag, hdr[3])
	}
	n := binary.BigEndian.Uint32(hdr[4:])
	if uint64(n)+8 > uint64(s.cfg.MaxMessageSize) {
		return nil, fmt.Errorf("%w: the message declares %d bytes, more than the %d allowed (kmip.max_message_size)", errBadFrame, uint64(n)+8, s.cfg.MaxMessageSize)
	}
	buf := make([]byte, 8+int(n))
	copy(buf, hdr[:])
	if _, err := io.ReadFull(c, buf[8:]); err != nil {
		clear(buf)
		return nil, fmt.Errorf("reading a %d-byte message: %w", len(buf), err)
	}
	return buf, nil
}

// reply writes resp within the read timeout and clears the buffers that
// carried key bytes: the payload fields (secrets), and the encoded
// response, which holds them in locked memory (encode) until written.
// It reports whether the connection may go on.
func (s *Server) reply(c *conn, resp *kmip.ResponseMessage, secrets *wipeList) bool {
	e := encode(resp, secrets.fields())
	secrets.clear()
	_ = c.SetWriteDeadline(s.cfg.Now().Add(s.cfg.ReadTimeout))
	_, err := c.Write(e.data) // a wipe.Conn: zeroes e.data once written
	e.release()
	if err != nil {
		s.log.Info("kmip: writing a response failed; connection closed", "peer", c.peer, "err", err)
		return false
	}
	return true
}

// handle decodes one message and runs it through the executor.
func (s *Server) handle(c *conn, buf []byte) (resp *kmip.ResponseMessage, secrets *wipeList) {
	now := s.cfg.Now()
	secrets = new(wipeList)
	req := new(kmip.RequestMessage)
	if err := decode(buf, req); err != nil {
		s.log.Info("kmip: malformed request answered with Invalid Message", "peer", c.peer, "err", err)
		return messageError(req, kmip.ResultReasonInvalidMessage, "malformed request: "+err.Error(), now), secrets
	}
	defer wipeRequest(req)
	if c.denied != "" {
		s.recordAll(req, kmip.ResultReasonPermissionDenied)
		return messageError(req, kmip.ResultReasonPermissionDenied, c.denied, now), secrets
	}
	if len(req.BatchItem) == 0 {
		return messageError(req, kmip.ResultReasonInvalidMessage, "the request has no batch item", now), secrets
	}
	if len(req.BatchItem) > maxBatchItems {
		return messageError(req, kmip.ResultReasonInvalidMessage, fmt.Sprintf("the request has %d batch items; keybroker takes at most %d per message", len(req.BatchItem), maxBatchItems), now), secrets
	}
	ctx := withCall(context.Background(), call{caller: c.caller, peer: c.peer, wipe: secrets})
	resp = s.exec.HandleRequest(ctx, req)
	finish(resp, req, now)
	return resp, secrets
}

// decode unmarshals a request, turning a decoder panic into an error so
// that one bad message never takes the process down.
func decode(buf []byte, req *kmip.RequestMessage) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("undecodable TTLV (%v)", r)
		}
	}()
	return ttlv.UnmarshalTTLV(buf, req)
}

// finish makes a response what strict clients parse: every failed item
// echoes its Operation and has a Result Message, and the header has the
// request's version and a Time Stamp.
func finish(resp *kmip.ResponseMessage, req *kmip.RequestMessage, now time.Time) {
	if resp.Header.TimeStamp.IsZero() {
		resp.Header.TimeStamp = now
	}
	resp.Header.TimeStamp = resp.Header.TimeStamp.Truncate(time.Second)
	for i := range resp.BatchItem {
		bi := &resp.BatchItem[i]
		if bi.Operation == 0 && i < len(req.BatchItem) {
			bi.Operation = req.BatchItem[i].Operation
			bi.UniqueBatchItemID = req.BatchItem[i].UniqueBatchItemID
		}
		if bi.ResultStatus != kmip.ResultStatusSuccess {
			bi.ResponsePayload = nil
			if bi.ResultReason == 0 {
				bi.ResultReason = kmip.ResultReasonGeneralFailure
			}
			if bi.ResultMessage == "" {
				bi.ResultMessage = ttlv.EnumStr(bi.ResultReason)
			}
		}
	}
	resp.Header.BatchCount = int32(len(resp.BatchItem))
}

// messageError answers a whole message with one failed batch item.
func messageError(req *kmip.RequestMessage, reason kmip.ResultReason, msg string, now time.Time) *kmip.ResponseMessage {
	v := kmip.V1_0
	var bi kmip.ResponseBatchItem
	if req != nil {
		if req.Header.ProtocolVersion != (kmip.ProtocolVersion{}) {
			v = req.Header.ProtocolVersion
		}
		if len(req.BatchItem) > 0 {
			bi.Operation = req.BatchItem[0].Operation
			bi.UniqueBatchItemID = req.BatchItem[0].UniqueBatchItemID
		}
	}
	bi.ResultStatus = kmip.ResultStatusOperationFailed
	bi.ResultReason = reason
	bi.ResultMessage = msg
	return &kmip.ResponseMessage{
		Header:    kmip.ResponseHeader{ProtocolVersion: v, TimeStamp: now.Truncate(time.Second), BatchCount: 1},
		BatchItem: []kmip.ResponseBatchItem{bi},
	}
}

// recordAll counts every item of a refused message.
func (s *Server) recordAll(req *kmip.RequestMessage, reason kmip.ResultReason) {
	if s.cfg.Metrics == nil {
		return
	}
	for _, bi := range req.BatchItem {
		_, done := s.cfg.Metrics.Operation(context.Background(), opName(bi.Operation))
		done(reasonName(reason))
	}
}

// wipeList collects the response payload fields that hold key bytes (a
// Get's Key Material, a Decrypt's Data): reply encodes them without
// letting them into kmip-go's encoder (encode) and clears them once
// encoded. Each entry points at the field itself, which encode swaps for
// placeholders. Best effort under a garbage collector: copies made by code
// that never saw the list may linger until reused.
type wipeList struct{ ptrs []*[]byte }

func (w *wipeList) add(p *[]byte) {
	if w != nil && p != nil {
		w.ptrs = append(w.ptrs, p)
	}
}

func (w *wipeList) fields() []*[]byte {
	if w == nil {
		return nil
	}
	return w.ptrs
}

func (w *wipeList) clear() {
	if w == nil {
		return
	}
	for _, p := range w.ptrs {
		clear(*p)
	}
	w.ptrs = nil
}

// wipeRequest clears key bytes a request carried (Register, Encrypt and
// Decrypt data).
func wipeRequest(req *kmip.RequestMessage) {
	for _, bi := range req.BatchItem {
		wipePayload(bi.RequestPayload)
	}
}

// call is what a handler knows of its request beyond the payload.
type call struct {
	caller broker.Caller
	peer   string
	wipe   *wipeList
}

type callKey struct{}

func withCall(ctx context.Context, c call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

func callOf(ctx context.Context) call {
	c, _ := ctx.Value(callKey{}).(call)
	return c
}

// Listen is net.Listen with an error naming the setting.
func Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kmip: listening on %s (kmip.address): %w", addr, err)
	}
	return l, nil
}
