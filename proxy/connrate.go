package proxy

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// connRates is the connection rate per address key ([sessions] conn_rate,
// conn_burst): a token bucket per key, in a table of at most max keys (the
// least recently used is forgotten, and starts again with a full burst).
// Its zero value is ready; safe for concurrent use.
type connRates struct {
	mu   sync.Mutex
	m    map[netip.Prefix]*list.Element
	lru  list.List // of *rateEntry, most recently used first
	lost uint64    // keys forgotten to stay within max
}

type rateEntry struct {
	key netip.Prefix
	lim *rate.Limiter
}

// allow takes one token from key's bucket at now (rate per second, burst),
// and reports whether there was one. The table holds at most maxKeys keys.
func (c *connRates) allow(now time.Time, key netip.Prefix, perSec float64, burst, maxKeys int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[netip.Prefix]*list.Element)
	}
	var e *rateEntry
	if el := c.m[key]; el != nil {
		c.lru.MoveToFront(el)
		e = el.Value.(*rateEntry)
		if e.lim.Limit() != rate.Limit(perSec) {
			e.lim.SetLimitAt(now, rate.Limit(perSec))
		}
		if e.lim.Burst() != burst {
			e.lim.SetBurstAt(now, burst)
		}
	} else {
		for c.lru.Len() >= max(maxKeys, 1) {
			old := c.lru.Back()
			c.lru.Remove(old)
			delete(c.m, old.Value.(*rateEntry).key)
			c.lost++
		}
		e = &rateEntry{key: key, lim: rate.NewLimiter(rate.Limit(perSec), burst)}
		e.lim.SetLimitAt(now, rate.Limit(perSec)) // start the bucket's clock at now: full
		c.m[key] = c.lru.PushFront(e)
	}
	return e.lim.AllowN(now, 1)
}

// len returns the keys tracked.
func (c *connRates) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
