package audit

import (
	"io"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// CombinedLog is a second access log beside the JSON audit log, in nginx's
// "combined" format plus the upstream address and times (the operations
// guide's mcp_access log_format), so that awk one-liners, GoAccess and
// fail2ban read Sluice's log as they read nginx's. Each line is
//
//	$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" upstream=$upstream_addr rt=$request_time urt=$upstream_response_time
//
// filled from the Record as follows:
//
//	$remote_addr             Workload.Client's address, "-" when unknown
//	$remote_user             always "-" (Sluice does not authenticate workloads)
//	$time_local              Time as 25/Nov/2026:09:00:00 +0000, in Time's location
//	$request                 "Method Path Proto", e.g. "GET /v1/models HTTP/1.1";
//	                         for an L4 flow "CONNECT host:port L4"
//	$status                  Status ("000" when there was none or it is not three digits); for
//	                         an L4 flow as nginx's stream module: 200, 403 when
//	                         denied, 502 on error
//	$body_bytes_sent         BytesOut
//	$http_referer            Header["Referer"], else "-"
//	$http_user_agent         Header["User-Agent"], else "-"
//	$upstream_addr           UpstreamAddr, else "-"
//	$request_time            Duration in seconds with millisecond resolution
//	$upstream_response_time  UpstreamDuration likewise, "-" when Sluice answered itself
//
// As nginx does, quoted values escape '"', '\' and bytes outside printable
// ASCII as \xHH, so a line never breaks and always parses. Header is only
// filled when the audit log records headers (audit.logHeaders); otherwise
// referer and user agent are "-". Kernel connect records are not written.
type CombinedLog struct {
	mu sync.Mutex
	w  io.Writer
}

var _ Sink = (*CombinedLog)(nil)

// NewCombinedLog writes lines to w, one Write per line.
func NewCombinedLog(w io.Writer) *CombinedLog { return &CombinedLog{w: w} }

// CombinedTimeLayout is nginx's $time_local.
const CombinedTimeLayout = "02/Jan/2006:15:04:05 -0700"

// Record implements Sink.
func (l *CombinedLog) Record(r *Record) {
	if r.Kind != KindHTTP && r.Kind != KindL4 {
		return
	}
	b := AppendCombined(make([]byte, 0, 256), r)
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// AppendCombined appends r's line (without the newline) to b.
func AppendCombined(b []byte, r *Record) []byte {
	if a := r.Workload.Client.Addr(); a.IsValid() {
		b = a.Unmap().AppendTo(b)
	} else {
		b = append(b, '-')
	}
	b = append(b, " - - ["...)
	b = r.Time.AppendFormat(b, CombinedTimeLayout)
	b = append(b, "] \""...)
	status := r.Status
	if r.Kind == KindL4 {
		host := r.Host
		if host == "" && r.DstIP.IsValid() {
			host = r.DstIP.String()
		}
		b = appendEscaped(b, "CONNECT "+hostPort(host, r.Port)+" L4")
		switch r.Decision {
		case DecisionDeny:
			status = 403
		case DecisionError:
			status = 502
		default:
			status = 200
		}
	} else {
		b = appendEscaped(b, r.Method+" "+r.Path+" "+r.Proto)
	}
	b = append(b, "\" "...)
	if status < 100 || status > 999 {
		b = append(b, "000"...)
	} else {
		b = strconv.AppendInt(b, int64(status), 10)
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, max(r.BytesOut, 0), 10)
	b = append(b, " \""...)
	b = appendEscaped(b, orDash(r.Header["Referer"]))
	b = append(b, "\" \""...)
	b = appendEscaped(b, orDash(r.Header["User-Agent"]))
	b = append(b, "\" upstream="...)
	b = appendEscaped(b, orDash(r.UpstreamAddr))
	b = append(b, " rt="...)
	b = appendSeconds(b, r.Duration)
	b = append(b, " urt="...)
	if r.UpstreamDuration > 0 {
		b = appendSeconds(b, r.UpstreamDuration)
	} else {
		b = append(b, '-')
	}
	return b
}

func hostPort(host string, port uint16) string {
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(port))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func appendSeconds(b []byte, d time.Duration) []byte {
	if d < 0 {
		d = 0
	}
	return strconv.AppendFloat(b, d.Seconds(), 'f', 3, 64)
}

// appendEscaped escapes as nginx's default log escaping: '"', '\' and
// bytes below 0x20 or above 0x7e become \xHH.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' || c < 0x20 || c > 0x7e {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
			continue
		}
		b = append(b, c)
	}
	return b
}
