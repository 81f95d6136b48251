/**
 * What every `SessionFollowStore` (lib/session/follow-store.ts) must do, as a suite any store runs:
 *
 *   await followStoreContract(t, async () => [storeA, storeB, storeC])
 *
 * `makeStores` is called once per subtest and returns the stores that share one state: one per
 * apiserver replica for a shared store (Redis), or the same store several times for one that lives
 * in a process (memory). The caller owns their lifecycle (close them in its teardown). Every
 * subtest uses session ids of its own, so stores may be reused and state may remain.
 *
 * Changes that reach other replicas asynchronously (revisions, through pub/sub) are awaited with a
 * deadline, never a fixed sleep; nothing here is timed, so a loaded machine only makes it slower.
 */
import type { Test } from 'tap'
import { randomUUID } from 'node:crypto'
import type { RefreshKey, RefreshLease, RefreshState, SessionFollowStore } from '../../lib/session/follow-store.js'
import type { SessionIdentity } from '../../lib/session/claims.js'

export interface FollowStoreContractOptions {
  /** How long a revision made on one store may take to show on the others (ms, default 10 s). */
  propagationMs?: number
}

const nowSec = (): number => Date.now() / 1000
const inAnHour = (): number => nowSec() + 3600
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** A state last checked ten minutes ago: due for any `dueBefore` after that. */
function stateOf (generation: number, sealed = `sealed-${generation}-${randomUUID()}`, checkedAt = nowSec() - 600): RefreshState {
  return { sealed, checkedAt, generation }
}

function identityOf (role: string): SessionIdentity {
  return { company: 'acme', user: 'u-1', user_name: 'Alice', role, company_name: 'Acme' }
}

/** Polls `check` until it holds or `timeoutMs` passes; the last value either way. */
async function eventually<T> (read: () => T, check: (value: T) => boolean, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let value = read()
  while (!check(value) && Date.now() < deadline) {
    await sleep(20)
    value = read()
  }
  return value
}

const DUE = { leaseMs: 30_000 }
const due = (): { dueBefore: number, leaseMs: number } => ({ dueBefore: nowSec() - 300, ...DUE })

export async function followStoreContract (t: Test, makeStores: () => Promise<SessionFollowStore[]>, options: FollowStoreContractOptions = {}): Promise<void> {
  const propagationMs = options.propagationMs ?? 10_000
  const replicas = async (): Promise<[SessionFollowStore, SessionFollowStore, SessionFollowStore]> => {
    const stores = await makeStores()
    if (stores.length === 0) throw new Error('makeStores returned no store')
    return [stores[0], stores[1 % stores.length], stores[2 % stores.length]]
  }
  const keyOf = (name: string, keycloakSession?: string): RefreshKey =>
    keycloakSession === undefined ? { session: `${name}-${randomUUID()}` } : { session: `${name}-${randomUUID()}`, keycloakSession }

  await t.test('a due session is leased to one caller; others see it busy, a recent one is fresh, an unknown one absent', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('lease', `kc-${randomUUID()}`)
    const state = stateOf(1)
    await a.saveRefresh(key, state, inAnHour())
    const leased = await b.leaseRefresh(key, due())
    t.equal(leased.status, 'leased', 'last checked before dueBefore: leased')
    if (leased.status !== 'leased') return
    t.strictSame(leased.state, state, 'with the state saved')
    t.type(leased.lease, 'string')
    t.strictSame(await c.leaseRefresh(key, due()), { status: 'busy', checkedAt: state.checkedAt }, 'while the lease is live: busy, with when it was last checked')
    t.strictSame(await a.leaseRefresh(key, due()), { status: 'busy', checkedAt: state.checkedAt })
    t.strictSame(await c.leaseRefresh(key, { dueBefore: state.checkedAt, leaseMs: 30_000 }), { status: 'fresh', checkedAt: state.checkedAt }, 'checked at dueBefore: fresh, even while leased')

    const recent = keyOf('recent')
    const checkedAt = nowSec()
    await a.saveRefresh(recent, stateOf(1, 'sealed-recent', checkedAt), inAnHour())
    t.strictSame(await b.leaseRefresh(recent, due()), { status: 'fresh', checkedAt }, 'checked after dueBefore: fresh')
    t.strictSame(await c.leaseRefresh(keyOf('never-saved'), due()), { status: 'absent' }, 'no state: absent')
  })

  await t.test('three stores, fifty concurrent leases each on one session: exactly one is leased', async (t) => {
    const stores = await replicas()
    const key = keyOf('race', `kc-${randomUUID()}`)
    await stores[0].saveRefresh(key, stateOf(1), inAnHour())
    const leases = await Promise.all(Array.from({ length: 150 }, async (_, i) => await stores[i % 3].leaseRefresh(key, due())))
    t.equal(leases.filter((l) => l.status === 'leased').length, 1, 'one lease of 150')
    t.equal(leases.filter((l) => l.status === 'busy').length, 149, 'every other caller: busy')
  })

  await t.test('a release with the rotated token replaces the state in the same step: the next holder reads it', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('rotate', `kc-${randomUUID()}`)
    await a.saveRefresh(key, stateOf(1), inAnHour())
    const first = await b.leaseRefresh(key, due()) as Extract<RefreshLease, { status: 'leased' }>
    t.equal(first.status, 'leased')
    const next = stateOf(2, 'sealed-rotated', nowSec())
    t.equal(await b.releaseRefresh(key, first.lease, next), true, 'the lease was the caller\'s')
    t.strictSame(await c.leaseRefresh(key, due()), { status: 'fresh', checkedAt: next.checkedAt }, 'checked now: fresh')
    const second = await c.leaseRefresh(key, { dueBefore: nowSec() + 1, leaseMs: 30_000 })
    t.strictSame(second.status === 'leased' && second.state, next, 'the next lease presents the rotated token')

    // Many rotations in a row, each holder on another store: every lease reads the previous release.
    let generation = 2
    let lease = second.status === 'leased' ? second.lease : ''
    for (let i = 0; i < 12; i++) {
      const holder = [a, b, c][i % 3]
      generation++
      const rotated = stateOf(generation, `sealed-${generation}`, nowSec() - 600)
      t.equal(await holder.releaseRefresh(key, lease, rotated), true)
      const taken = await [a, b, c][(i + 1) % 3].leaseRefresh(key, due())
      if (taken.status !== 'leased') {
        t.fail(`lease ${i}: ${taken.status}`)
        return
      }
      t.strictSame(taken.state, rotated, `rotation ${generation} read by the next holder`)
      lease = taken.lease
    }
  })

  await t.test('a release without a token (Keycloak did not answer) keeps the state and frees the lease', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('unanswered')
    const state = stateOf(1)
    await a.saveRefresh(key, state, inAnHour())
    const first = await b.leaseRefresh(key, due())
    t.equal(first.status, 'leased')
    t.equal(await b.releaseRefresh(key, first.status === 'leased' ? first.lease : ''), true)
    const again = await c.leaseRefresh(key, due())
    t.strictSame(again.status === 'leased' && again.state, state, 'leased again at once, the same token')
  })

  await t.test('a lease ends after leaseMs; a release after that answers false, but its rotated token still replaces an older one', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('expiring', `kc-${randomUUID()}`)
    const state = stateOf(1)
    await a.saveRefresh(key, state, inAnHour())
    const first = await b.leaseRefresh(key, { dueBefore: nowSec() - 300, leaseMs: 300 })
    t.equal(first.status, 'leased')
    t.equal((await c.leaseRefresh(key, due())).status, 'busy', 'busy until leaseMs has passed')
    let later: RefreshLease = { status: 'busy', checkedAt: 0 }
    const deadline = Date.now() + 15_000
    while (later.status === 'busy' && Date.now() < deadline) {
      await sleep(50)
      later = await c.leaseRefresh(key, due())
    }
    t.equal(later.status, 'leased', 'once leaseMs has passed, another caller gets the lease')
    t.strictSame(later.status === 'leased' && later.state, state)

    const rotated = stateOf(2, 'sealed-late-rotation', nowSec())
    t.equal(await b.releaseRefresh(key, first.status === 'leased' ? first.lease : '', rotated), false, 'the first lease was lost')
    t.equal(await c.releaseRefresh(key, later.status === 'leased' ? later.lease : ''), true, 'the second holder releases its own')
    const after = await a.leaseRefresh(key, { dueBefore: nowSec() + 1, leaseMs: 30_000 })
    t.strictSame(after.status === 'leased' && after.state, rotated, 'a rotated token is never dropped, even from a lost lease')
  })

  await t.test('a higher generation is never replaced by a lower or equal one, by a save or a release', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('generations')
    const third = stateOf(3)
    await a.saveRefresh(key, stateOf(1), inAnHour())
    await b.saveRefresh(key, third, inAnHour())
    await c.saveRefresh(key, stateOf(2), inAnHour())
    await a.saveRefresh(key, stateOf(3, 'sealed-other-3'), inAnHour())
    const leased = await b.leaseRefresh(key, due())
    t.strictSame(leased.status === 'leased' && leased.state, third, 'the higher generation stays')
    t.equal(await b.releaseRefresh(key, leased.status === 'leased' ? leased.lease : '', stateOf(3, 'sealed-same-generation')), true)
    t.equal(await c.releaseRefresh(key, 'not-a-lease', stateOf(2)), false, 'a lease that was never granted')
    const again = await c.leaseRefresh(key, due())
    t.strictSame(again.status === 'leased' && again.state, third, 'neither an equal nor a lower generation replaced it')

    // Concurrent releases of rotated tokens of many generations: the highest wins, whatever the order.
    const holder = again.status === 'leased' ? again.lease : ''
    const stores = [a, b, c]
    await Promise.all(Array.from({ length: 12 }, async (_, i) => await stores[i % 3].releaseRefresh(key, holder, stateOf(4 + ((i * 5) % 12), `sealed-${4 + ((i * 5) % 12)}`))))
    const last = await a.leaseRefresh(key, due())
    t.equal(last.status === 'leased' && last.state.generation, 15, 'generation 15 of 4..15')
    t.equal(last.status === 'leased' && last.state.sealed, 'sealed-15')
  })

  await t.test('endRefresh: the session is ended for every store until it expires; nothing revives it', async (t) => {
    const [a, b, c] = await replicas()
    const sid = `kc-${randomUUID()}`
    const key = keyOf('ended', sid)
    await a.saveRefresh(key, stateOf(1), inAnHour())
    const held = await a.leaseRefresh(key, due())
    await b.endRefresh(key, inAnHour())
    for (const store of [a, b, c]) t.strictSame(await store.leaseRefresh(key, due()), { status: 'ended' }, 'ended on every store')
    t.equal(await a.releaseRefresh(key, held.status === 'leased' ? held.lease : '', stateOf(2)), false, 'the lease held before the end is gone')
    await c.saveRefresh(key, stateOf(9), inAnHour())
    t.strictSame(await a.leaseRefresh(key, due()), { status: 'ended' }, 'a save after the end does not revive it')
    t.strictSame(await c.takeKeycloakSessionRefreshes(sid), [], 'there is no token to take through its Keycloak session')
    t.equal(await b.takeRefresh(key), undefined, 'nor by the session (a store may drop the mark then: its session is logged out)')
    t.not((await a.leaseRefresh(key, due())).status, 'leased', 'and still no lease')
  })

  await t.test('takeRefresh: the state is removed and returned once, whichever store asks', async (t) => {
    const [a, b, c] = await replicas()
    const key = keyOf('taken', `kc-${randomUUID()}`)
    const state = stateOf(1)
    await a.saveRefresh(key, state, inAnHour())
    const held = await c.leaseRefresh(key, due())
    t.strictSame(await b.takeRefresh(key), state, 'returned to the logout')
    t.equal(await c.takeRefresh(key), undefined, 'once')
    t.equal(await a.takeRefresh(key), undefined)
    t.strictSame(await a.leaseRefresh(key, due()), { status: 'absent' }, 'absent everywhere after')
    await c.releaseRefresh(key, held.status === 'leased' ? held.lease : '', stateOf(2))
    t.strictSame(await b.leaseRefresh(key, due()), { status: 'absent' }, 'a refresh that ends after the logout does not bring the state back')
    t.equal(await a.takeRefresh(keyOf('never-saved')), undefined)
  })

  await t.test('takeKeycloakSessionRefreshes: every live session of one Keycloak session, once', async (t) => {
    const [a, b, c] = await replicas()
    const sid = `kc-${randomUUID()}`
    const other = `kc-${randomUUID()}`
    const first = keyOf('sso-1', sid)
    const second = keyOf('sso-2', sid)
    const elsewhere = keyOf('sso-other', other)
    const alone = keyOf('sso-none')
    const ended = keyOf('sso-ended', sid)
    const states = [stateOf(1, 'sealed-a'), stateOf(4, 'sealed-b')]
    await a.saveRefresh(first, states[0], inAnHour())
    await b.saveRefresh(second, stateOf(3), inAnHour())
    await c.saveRefresh(second, states[1], inAnHour())
    await a.saveRefresh(elsewhere, stateOf(1), inAnHour())
    await b.saveRefresh(alone, stateOf(1), inAnHour())
    await c.saveRefresh(ended, stateOf(1), inAnHour())
    await a.endRefresh(ended, inAnHour())
    const taken = await b.takeKeycloakSessionRefreshes(sid)
    t.strictSame([...taken].sort((x, y) => x.sealed.localeCompare(y.sealed)), states, 'both live sessions, each at its newest generation; not the ended one')
    t.strictSame(await c.takeKeycloakSessionRefreshes(sid), [], 'once')
    t.strictSame(await a.leaseRefresh(first, due()), { status: 'absent' })
    t.strictSame(await a.leaseRefresh(second, due()), { status: 'absent' })
    t.equal((await c.leaseRefresh(elsewhere, due())).status, 'leased', 'another Keycloak session keeps its state')
    t.equal((await c.leaseRefresh(alone, due())).status, 'leased', 'so does a session without one')
    t.strictSame(await a.takeKeycloakSessionRefreshes(`kc-${randomUUID()}`), [], 'an unknown Keycloak session: none')
  })

  await t.test('revise and revision: every store answers with the newest version, synchronously', async (t) => {
    const [a, b, c] = await replicas()
    const session = `revised-${randomUUID()}`
    t.equal(a.revision(session), undefined, 'never revised: undefined')
    await a.revise(session, { version: 1, identity: identityOf('user') }, inAnHour())
    t.strictSame(a.revision(session), { version: 1, identity: identityOf('user') }, 'on the store that revised it, at once')
    for (const store of [b, c]) {
      t.strictSame(await eventually(() => store.revision(session), (r) => r?.version === 1, propagationMs), { version: 1, identity: identityOf('user') }, 'and on the others')
    }
    await b.revise(session, { version: 3, identity: identityOf('admin') }, inAnHour())
    await c.revise(session, { version: 2, identity: identityOf('guest') }, inAnHour())
    for (const store of [a, b, c]) {
      t.strictSame(await eventually(() => store.revision(session), (r) => r?.version === 3, propagationMs), { version: 3, identity: identityOf('admin') }, 'the higher version wins')
    }
    await sleep(50)
    for (const store of [a, b, c]) t.equal(store.revision(session)?.version, 3, 'a lower version arriving later does not replace it')
    t.equal(c.revision(`revised-${randomUUID()}`), undefined)

    // The plugin's MAC travels with the revision, untouched, to every replica and through a full load.
    const signed = `signed-${randomUUID()}`
    await a.revise(signed, { version: 1, identity: identityOf('user'), mac: 'bWFjLW9mLXRoZS1wbHVnaW4' }, inAnHour())
    for (const store of [a, b, c]) {
      t.strictSame(await eventually(() => store.revision(signed), (r) => r?.version === 1, propagationMs), { version: 1, identity: identityOf('user'), mac: 'bWFjLW9mLXRoZS1wbHVnaW4' }, 'the mac is kept and handed back as it is')
    }
  })

  await t.test('everything expires with its session', async (t) => {
    const [a, b, c] = await replicas()
    const sid = `kc-${randomUUID()}`
    const soon = nowSec() + 1.5
    const key = keyOf('expiring-session', sid)
    const taken = keyOf('expiring-taken')
    const session = `expiring-revision-${randomUUID()}`
    await a.saveRefresh(key, stateOf(1), soon)
    await a.saveRefresh(taken, stateOf(1), soon)
    await b.revise(session, { version: 1, identity: identityOf('user') }, soon)
    await c.saveRefresh(keyOf('already-over'), stateOf(1), nowSec() - 1)
    t.equal(await eventually(() => c.revision(session)?.version, (v) => v === 1, propagationMs), 1, 'live until then')
    await sleep((soon + 0.1) * 1000 - Date.now())
    for (const store of [a, b, c]) {
      t.strictSame(await store.leaseRefresh(key, due()), { status: 'absent' }, 'the refresh state has expired')
      t.equal(store.revision(session), undefined, 'so has the revision')
    }
    t.equal(await b.takeRefresh(taken), undefined)
    t.strictSame(await c.takeKeycloakSessionRefreshes(sid), [])
  })
}
