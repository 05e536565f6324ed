package hedge

import (
	"testing"
	"time"
)

func TestLatencies(t *testing.T) {
	l := New()
	if d := l.Delay(time.Millisecond, time.Second); d != 5*time.Millisecond {
		t.Fatalf("delay before any sample: %v, want the initial 5ms", d)
	}
	for i := 1; i <= 64; i++ {
		l.Record(time.Duration(i) * time.Millisecond)
		if i < 64 {
			if d := l.Delay(time.Millisecond, time.Second); d != 5*time.Millisecond {
				t.Fatalf("delay after %d samples: %v, want the initial 5ms until 64", i, d)
			}
		}
	}
	if d := l.Delay(time.Millisecond, time.Second); d != 61*time.Millisecond {
		t.Fatalf("delay after 1..64ms: %v, want the p95, 61ms", d)
	}
	if d := l.Delay(time.Millisecond, 50*time.Millisecond); d != 50*time.Millisecond {
		t.Fatalf("delay bounded by 50ms: %v", d)
	}
	if d := l.Delay(100*time.Millisecond, time.Second); d != 100*time.Millisecond {
		t.Fatalf("delay bounded below by 100ms: %v", d)
	}
}
