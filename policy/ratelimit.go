package policy

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// Rate limiting
//
// Each configured window (second, minute, hour, day) of a rate limit is a
// token bucket holding up to `limit` tokens (the shortest window holds
// `burst` when set) and refilled at limit/window. A request takes one token
// from every bucket of its key, or none when any is empty: then it gets 429
// with Retry-After, the seconds until every bucket has a token again
// (rounded up). Keys are per rule and window plus the workload name, the
// destination host, or both (`by`).
//
// Response headers follow draft-ietf-httpapi-ratelimit-headers-11 (May
// 2026, same syntax since -08): one policy item per window,
//
//	RateLimit-Policy: "RULE-minute";q=100;w=60
//	RateLimit: "RULE-minute";r=42;t=30
//
// q is the window's limit, w its length in seconds, r the requests left now
// and t the seconds until the bucket is full again (rounded up). Kong-style
// X-RateLimit-Limit-Minute / X-RateLimit-Remaining-Minute are added with
// kongHeaders; hideClientHeaders removes all of them (Retry-After stays on
// a 429).
//
// policy: redis keeps the same token buckets in Redis hashes updated by one
// Lua script per request (atomic across every proxy using the server; the
// clock is Redis's TIME, so proxies' clocks do not matter).

// DefaultMaxKeys bounds the local buckets kept in memory (LRU).
const DefaultMaxKeys = 100_000

// Limiters holds rate-limit state: the local buckets and the Redis
// clients. It outlives Engines: pass the same Limiters to every Engine
// compiled on reload (Options.Limiters) so counters survive the reload.
// Safe for concurrent use.
type Limiters struct {
	mu      sync.Mutex
	buckets *simplelru.LRU[string, *bucket]

	rmu    sync.Mutex
	redis  map[Redis]*redis.Client
	faults atomic.Int64
	// lastFaultLog (unix nanoseconds) throttles the Redis-down warning.
	lastFaultLog atomic.Int64
}

// redisLog sends go-redis's own messages (it logs dial failures on every
// attempt) to slog at debug level; the policy logs Redis faults itself,
// throttled.
type redisLog struct{}

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, fmt.Sprintf(format, v...), audit.KeyComponent, audit.ComponentRedis)
}

var setRedisLogger sync.Once

type bucket struct {
	tokens float64
	last   time.Time
}

// NewLimiters returns an empty store keeping at most maxKeys local
// buckets (DefaultMaxKeys when maxKeys <= 0), least recently used evicted.
func NewLimiters(maxKeys int) *Limiters {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	setRedisLogger.Do(func() { redis.SetLogger(redisLog{}) })
	lru, _ := simplelru.NewLRU[string, *bucket](maxKeys, nil)
	return &Limiters{buckets: lru, redis: map[Redis]*redis.Client{}}
}

// Faults is the number of requests decided while Redis was unreachable.
func (l *Limiters) Faults() int64 { return l.faults.Load() }

// Len is the number of local buckets held.
func (l *Limiters) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buckets.Len()
}

// Close closes the Redis clients. The store must not be used afterwards.
func (l *Limiters) Close() error {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	for k, c := range l.redis {
		c.Close()
		delete(l.redis, k)
	}
	return nil
}

func (l *Limiters) client(r Redis, timeout time.Duration) *redis.Client {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	if c, ok := l.redis[r]; ok {
		return c
	}
	c := redis.NewClient(&redis.Options{
		Addr:          r.Addr,
		Username:      r.Username,
		Password:      r.Password,
		DB:            r.DB,
		DialTimeout:   timeout,
		ReadTimeout:   timeout,
		WriteTimeout:  timeout,
		PoolTimeout:   timeout,
		MaxRetries:    -1, // a down Redis must be noticed within one timeout
		DialerRetries: 1,
	})
	l.redis[r] = c
	return c
}

// window is one bucket definition.
type window struct {
	name   string // "second", "minute", ...
	title  string // "Second", for X-RateLimit-*-Second
	length time.Duration
	limit  int64
	cap    float64
	rate   float64 // tokens per second
}

// limiter is a compiled RateLimit of one rule.
type limiter struct {
	rule          string
	windows       []window
	by            string
	redis         *redis.Client
	prefix        string
	timeout       time.Duration
	faultTolerant bool
	hide, kong    bool
}

func compileLimiter(rule string, r *RateLimit, store *Limiters) *limiter {
	l := &limiter{rule: rule, by: r.By, hide: r.HideClientHeaders, kong: r.KongHeaders, faultTolerant: true}
	if l.by == "" {
		l.by = "workload"
	}
	for _, w := range []struct {
		name, title string
		d           time.Duration
		n           int64
	}{{"second", "Second", time.Second, r.Second}, {"minute", "Minute", time.Minute, r.Minute}, {"hour", "Hour", time.Hour, r.Hour}, {"day", "Day", 24 * time.Hour, r.Day}} {
		if w.n > 0 {
			l.windows = append(l.windows, window{name: w.name, title: w.title, length: w.d, limit: w.n, cap: float64(w.n), rate: float64(w.n) / w.d.Seconds()})
		}
	}
	if r.Burst > 0 && len(l.windows) > 0 {
		l.windows[0].cap = float64(r.Burst)
	}
	if r.Policy == "redis" {
		l.timeout = 200 * time.Millisecond
		if t, err := time.ParseDuration(r.Redis.Timeout); err == nil && t > 0 {
			l.timeout = t
		}
		l.prefix = r.Redis.Prefix
		if l.prefix == "" {
			l.prefix = "sluice:rl:"
		}
		l.redis = store.client(r.Redis, l.timeout)
		if r.FaultTolerant != nil {
			l.faultTolerant = *r.FaultTolerant
		}
	}
	return l
}

// key is the bucket key of a request (without window).
func (l *limiter) key(id *workload.Identity, host string) string {
	wl := id.Name()
	if wl == "unknown" && id.Client.IsValid() {
		wl = "client:" + id.Client.Addr().String()
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	switch l.by {
	case "destination":
		return l.rule + "|host:" + host
	case "both":
		return l.rule + "|" + wl + "|host:" + host
	default:
		return l.rule + "|" + wl
	}
}

// outcome is the state of every window after one request.
type outcome struct {
	allowed bool
	wait    time.Duration // until a token is available in every window
	tokens  []float64     // per window, after the request
}

// take consumes one token from every local bucket of key, or none.
func (l *limiter) takeLocal(s *Limiters, key string, now time.Time) outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	bs := make([]*bucket, len(l.windows))
	o := outcome{allowed: true, tokens: make([]float64, len(l.windows))}
	for i, w := range l.windows {
		k := key + "|" + w.name
		b, ok := s.buckets.Get(k)
		if !ok {
			b = &bucket{tokens: w.cap, last: now}
			s.buckets.Add(k, b)
		}
		if el := now.Sub(b.last).Seconds(); el > 0 {
			b.tokens += el * w.rate
			b.last = now
		}
		b.tokens = min(b.tokens, w.cap) // also clips state from a larger limit before a reload
		bs[i] = b
		if b.tokens < 1 {
			o.allowed = false
			o.wait = max(o.wait, time.Duration((1-b.tokens)/w.rate*float64(time.Second)))
		}
	}
	for i, b := range bs {
		if o.allowed {
			b.tokens--
		}
		o.tokens[i] = b.tokens
	}
	return o
}

// The Redis script: KEYS are the buckets (one per window), ARGV holds
// capacity, rate (tokens per microsecond) and TTL in ms for each. It
// returns allowed (1/0), the wait in microseconds, and the tokens left per
// window.
var redisScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ok = 1
local wait = 0
local tk = {}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3*i-2])
  local rate = tonumber(ARGV[3*i-1])
  local v = redis.call('HMGET', KEYS[i], 'tk', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if tokens == nil or ts == nil then tokens = cap; ts = now end
  if now > ts then tokens = tokens + (now - ts) * rate end
  if tokens > cap then tokens = cap end
  tk[i] = tokens
  if tokens < 1 then
    ok = 0
    local w = (1 - tokens) / rate
    if w > wait then wait = w end
  end
end
local out = {tostring(ok), string.format('%.0f', wait)}
for i = 1, #KEYS do
  if ok == 1 then tk[i] = tk[i] - 1 end
  redis.call('HSET', KEYS[i], 'tk', string.format('%.6f', tk[i]), 'ts', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[i], ARGV[3*i])
  out[#out+1] = string.format('%.6f', tk[i])
end
return out
`)

func (l *limiter) takeRedis(ctx context.Context, key string) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	keys := make([]string, len(l.windows))
	args := make([]any, 0, 3*len(l.windows))
	for i, w := range l.windows {
		// The hash tag keeps a key's windows in one Redis Cluster slot.
		keys[i] = l.prefix + "{" + key + "}:" + w.name
		args = append(args, strconv.FormatFloat(w.cap, 'f', -1, 64),
			strconv.FormatFloat(w.rate/1e6, 'g', -1, 64),
			strconv.FormatInt(2*w.length.Milliseconds()+1000, 10))
	}
	res, err := redisScript.Run(ctx, l.redis, keys, args...).StringSlice()
	if err != nil {
		return outcome{}, fmt.Errorf("rate limit in redis: %w", err)
	}
	if len(res) != 2+len(l.windows) {
		return outcome{}, fmt.Errorf("rate limit in redis: script returned %d values, want %d", len(res), 2+len(l.windows))
	}
	o := outcome{allowed: res[0] == "1", tokens: make([]float64, len(l.windows))}
	us, _ := strconv.ParseFloat(res[1], 64)
	o.wait = time.Duration(us) * time.Microsecond
	for i := range l.windows {
		o.tokens[i], _ = strconv.ParseFloat(res[2+i], 64)
	}
	return o, nil
}

// apply runs the limiter for one request and completes d: it adds the
// headers, and on exhaustion turns d into a 429 deny (or a would-deny in
// audit mode).
// A tool (an MCP tools/call under a rule with an mcp block) has buckets
// of its own.
func (l *limiter) apply(ctx context.Context, s *Limiters, log *slog.Logger, id *workload.Identity, host, tool string, now time.Time, auditMode bool, d *Decision) {
	key := l.key(id, host)
	if tool != "" {
		key += "|tool:" + tool
	}
	var o outcome
	if l.redis != nil {
		var err error
		o, err = l.takeRedis(ctx, key)
		if err != nil {
			n := s.faults.Add(1)
			if last := s.lastFaultLog.Load(); now.UnixNano()-last > int64(10*time.Second) && s.lastFaultLog.CompareAndSwap(last, now.UnixNano()) {
				log.Warn("rate limiter unavailable", audit.KeyRule, l.rule, audit.KeyFaultTolerant, l.faultTolerant, audit.KeyFaultsTotal, n, audit.KeyError, err.Error())
			}
			if l.faultTolerant {
				d.Reason = audit.ReasonLimiterDownPass
				return
			}
			l.deny(d, audit.ReasonLimiterDown, http.StatusServiceUnavailable, auditMode)
			return
		}
	} else {
		o = l.takeLocal(s, key, now)
	}
	if d.Header == nil {
		d.Header = http.Header{}
	}
	if !l.hide {
		pol := make([]string, len(l.windows))
		cur := make([]string, len(l.windows))
		for i, w := range l.windows {
			name := strconv.Quote(l.rule + "-" + w.name)
			pol[i] = fmt.Sprintf("%s;q=%d;w=%d", name, w.limit, int64(w.length.Seconds()))
			left := max(o.tokens[i], 0)
			reset := ceil((w.cap - o.tokens[i]) / w.rate)
			cur[i] = fmt.Sprintf("%s;r=%d;t=%d", name, int64(math.Floor(left)), max(reset, 0))
			if l.kong {
				d.Header.Set("X-RateLimit-Limit-"+w.title, strconv.FormatInt(w.limit, 10))
				d.Header.Set("X-RateLimit-Remaining-"+w.title, strconv.FormatInt(int64(math.Floor(left)), 10))
			}
		}
		d.Header.Set("RateLimit-Policy", strings.Join(pol, ", "))
		d.Header.Set("RateLimit", strings.Join(cur, ", "))
	}
	if !o.allowed {
		secs := max(ceil(o.wait.Seconds()), 1)
		if !auditMode {
			d.Header.Set("Retry-After", strconv.FormatInt(secs, 10))
		}
		l.deny(d, audit.ReasonRateLimited, http.StatusTooManyRequests, auditMode)
	}
}

func (l *limiter) deny(d *Decision, reason string, status int, auditMode bool) {
	d.Rule, d.Reason, d.Status = l.rule, reason, status
	if auditMode {
		d.WouldDeny = true
		return
	}
	d.Verdict = Deny
}

// ceil rounds seconds up, ignoring float noise below a microsecond.
func ceil(secs float64) int64 { return int64(math.Ceil(secs - 1e-6)) }
