package mitm

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

type closeWriter interface{ CloseWrite() error }

// closeWrite half-closes c when it can, and closes it otherwise.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// relay copies bytes both ways between client and upstream until both
// directions end, ctx is cancelled, or neither side sends anything for
// idle. It closes upstream; the caller closes client. in counts
// client->upstream bytes, out upstream->client.
func relay(ctx context.Context, client, upstream net.Conn, idle time.Duration) (in, out int64, err error) {
	defer upstream.Close()
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		upstream.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	var inErr, outErr error
	wg.Add(2)
	act := &activity{}
	act.touch()
	go func() {
		defer wg.Done()
		in, inErr = copyIdle(upstream, client, client, idle, act)
		_ = closeWrite(upstream)
	}()
	go func() {
		defer wg.Done()
		out, outErr = copyIdle(client, upstream, upstream, idle, act)
		_ = closeWrite(client)
	}()
	wg.Wait()
	return in, out, firstRealError(inErr, outErr)
}

// pipe is relay for a hijacked client whose reads go through r and an
// upgraded upstream body.
func pipe(ctx context.Context, r io.Reader, client net.Conn, up io.ReadWriteCloser) (in, out int64, err error) {
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		up.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	var inErr, outErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		in, inErr = io.Copy(up, r)
		if cw, ok := up.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			up.Close()
		}
	}()
	go func() {
		defer wg.Done()
		out, outErr = io.Copy(client, up)
		client.Close()
		up.Close()
	}()
	wg.Wait()
	return in, out, firstRealError(inErr, outErr)
}

// activity is the last time either direction moved a byte.
type activity struct {
	mu sync.Mutex
	t  time.Time
}

func (a *activity) touch() {
	a.mu.Lock()
	a.t = time.Now()
	a.mu.Unlock()
}

func (a *activity) since() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Since(a.t)
}

// copyIdle copies src to dst; a read that waits longer than idle ends the
// copy only if the other direction was idle too.
func copyIdle(dst io.Writer, src io.Reader, srcConn net.Conn, idle time.Duration, act *activity) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		_ = srcConn.SetReadDeadline(time.Now().Add(idle))
		m, err := src.Read(buf)
		if m > 0 {
			act.touch()
			w, werr := dst.Write(buf[:m])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && act.since() < idle {
				continue
			}
			if err == io.EOF {
				return n, nil
			}
			return n, err
		}
	}
}

func firstRealError(errs ...error) error {
	for _, e := range errs {
		if e != nil && !errors.Is(e, net.ErrClosed) && !errors.Is(e, io.EOF) {
			return e
		}
	}
	return nil
}
