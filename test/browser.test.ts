/**
 * The demo in a real browser: Debian's Chromium, driven by playwright-core, clicks through the login
 * of every demo user, checks what the page shows, logs out of ClearML and Keycloak, and saves the
 * screenshots the README shows.
 */
import t, { type Test } from 'tap'
import { existsSync } from 'node:fs'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import { startDemo } from '../examples/demo/server.js'
import { startWebappHost, type WebappHost } from '../examples/clearml-webapp/server.js'
import { fakeWebappBuild } from './helpers/fake-webapp.js'

const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const screenshots = new URL('../docs/screenshots/', import.meta.url)

if (!existsSync(executablePath)) {
  throw new Error(`The browser test needs Chromium at ${executablePath}: apt-get install -y chromium (or set CHROMIUM_PATH)`)
}

const demo = await startDemo({ logger: false })
const browser: Browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
})
t.teardown(async () => {
  await browser.close()
  await demo.close()
})

/**
 * The README's screenshots. Chromium on a loaded machine sometimes answers "Unable to capture
 * screenshot" for a page it has drawn; the picture is documentation, not the behaviour under test,
 * so it is asked for again before the test gives up.
 */
async function screenshot (page: Page, name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.screenshot({ path: new URL(name, screenshots).pathname })
      return
    } catch (err) {
      if (attempt === 3) throw err
      await page.waitForTimeout(250)
    }
  }
}

async function keycloakLogin (page: Page, username: string, password: string): Promise<void> {
  await page.goto(demo.url)
  await page.click('#login-keycloak')
  await page.waitForSelector('#kc-login')
  await page.fill('#username', username)
  await page.fill('#password', password)
  await page.click('#kc-login')
}

const expectations = [
  { username: 'alice', role: 'admin', groups: 'ml-team' },
  { username: 'carol', role: 'admin', groups: 'data-science' },
  { username: 'bob', role: 'user', groups: 'data-science ml-team' },
  { username: 'dave', role: 'user', groups: 'none' },
  // 60 group paths: her sealed ID token would pass 4 KB, which a browser drops without a word.
  { username: 'erin', role: 'user', groups: 'ml-team' }
]

for (const expected of expectations) {
  t.test(`${expected.username} logs in, sees role and groups, and logs out of ClearML and Keycloak`, async (t) => {
    const context = await browser.newContext({ viewport: { width: 900, height: 560 } })
    t.teardown(async () => { await context.close() })
    const page = await context.newPage()
    await page.goto(demo.url)
    t.equal(new URL(page.url()).pathname, '/login', 'not logged in: the login page')
    if (expected.username === 'alice') await screenshot(page, 'login.png')
    await page.click('#login-keycloak')
    await page.waitForSelector('#kc-login')
    t.equal(new URL(page.url()).origin, new URL(demo.idp.issuer).origin, 'at the identity provider')
    if (expected.username === 'alice') await screenshot(page, 'keycloak-login.png')
    await page.fill('#username', expected.username)
    await page.fill('#password', expected.username)
    await page.click('#kc-login')
    await page.waitForSelector('#user-role')
    t.equal(page.url(), `${demo.url}/`, 'back at the web app')
    t.equal(await page.textContent('#user-role'), expected.role)
    t.equal((await page.textContent('#user-groups'))?.trim(), expected.groups)
    const cookies = await context.cookies(demo.url)
    const session = cookies.find((c) => c.name === 'clearml_token_basic')
    t.equal(session?.httpOnly, true, 'the session cookie is HttpOnly')
    t.equal(await page.evaluate('document.cookie'), '', 'no cookie of the plugin is readable by scripts')
    const idTokenCookie = cookies.find((c) => c.name === 'clearml_kc_idt')
    t.ok(idTokenCookie !== undefined && idTokenCookie.name.length + idTokenCookie.value.length < 4096, 'the browser kept the ID-token cookie')
    if (expected.username !== 'erin') await screenshot(page, `${expected.username}.png`)

    await page.click('#logout')
    await page.waitForURL(`${demo.url}/login`)
    t.notOk((await context.cookies(demo.url)).some((c) => c.name === 'clearml_token_basic'), 'session cookie gone')
    await page.click('#login-keycloak')
    await page.waitForSelector('#kc-login')
    t.pass('Keycloak asks for the password again: idp_logout ended its session too')
  })
}

t.test('a refusal is shown on the login page: a wrong password stays at the provider', async (t) => {
  const context = await browser.newContext()
  t.teardown(async () => { await context.close() })
  const page = await context.newPage()
  await keycloakLogin(page, 'alice', 'not-her-password')
  await page.waitForSelector('#input-error')
  t.match(await page.textContent('#input-error'), /Invalid username or password/)
  const cancelled = await context.newPage()
  await cancelled.goto(`${demo.url}/callback_keycloak?error=access_denied`)
  t.equal(await cancelled.textContent('#sso-error code'), 'idp_error', 'a cancelled login lands on /login with its code')
})

/** The example web app host serving a fake build, and a page of a fresh browser context; all closed after the test. */
async function webappHostPage (t: Test): Promise<{ host: WebappHost, context: BrowserContext, page: Page }> {
  const build = fakeWebappBuild()
  const host = await startWebappHost({ webappDir: build.dir, logger: false })
  const context = await browser.newContext()
  t.teardown(async () => {
    await context.close()
    await host.close()
    build.remove()
  })
  return { host, context, page: await context.newPage() }
}

t.test('ClearML\'s web app served by the example host: a page load goes to Keycloak and comes back to that page, logged in', async (t) => {
  const { host, page } = await webappHostPage(t)
  await page.goto(`${host.url}/projects/p1/experiments?tab=info`)
  await page.waitForSelector('#kc-login')
  t.equal(new URL(page.url()).origin, new URL(host.idp.issuer).origin, 'no session: the page load ends on Keycloak\'s form')
  await page.fill('#username', 'bob')
  await page.fill('#password', 'bob')
  await page.click('#kc-login')
  await page.waitForSelector('#user-name')
  t.equal(page.url(), `${host.url}/projects/p1/experiments?tab=info`, 'back on the page asked for, with its query')
  t.equal(await page.textContent('#user-name'), 'Bob Brown', 'the web app started: supported_modes, then its user, on /api/v999.0/')
  t.equal(await page.textContent('#login-mode'), 'ssoOnly')
  t.equal(await page.textContent('#app'), 'ClearML at /projects/p1/experiments?tab=info')
  t.equal(await page.evaluate('document.cookie'), '', 'the session stays HttpOnly')
})

t.test('a session that ends while the web app is open: its in-app move to /login becomes a page load, Keycloak, and back to the page', async (t) => {
  const { host, context, page } = await webappHostPage(t)
  const pageLoads: string[] = []
  page.on('request', (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) pageLoads.push(new URL(request.url()).pathname)
  })
  await page.goto(`${host.url}/projects/p1?tab=info`)
  await page.fill('#username', 'bob')
  await page.fill('#password', 'bob')
  await page.click('#kc-login')
  await page.waitForSelector('#projects')

  // Moves the host's script must leave alone: the page notices a reload by losing the marker.
  const stillSamePage = async (move: string): Promise<boolean> => {
    await page.evaluate(`window.sameDocument = true; ${move}`)
    await page.waitForTimeout(500)
    return await page.evaluate('window.sameDocument === true')
  }
  t.ok(await stillSamePage('history.pushState(null, "", "/projects/p2")'), 'a move between pages: no reload')
  t.ok(await stillSamePage('history.pushState(null, "", "/login?sso_error=idp_error")'), 'a move to a refusal\'s page: no reload')
  t.ok(await stillSamePage('history.replaceState(null, "", "/login?redirect=%2Fx")'), 'the login page replacing its own address: no reload')
  await page.goto(`${host.url}/projects/p1?tab=info`)
  await page.waitForSelector('#projects')

  // Logged out in another tab: the cookie is gone, the web app's next call answers 401.
  const logout = await context.request.post(`${host.url}/api/login.logout`, { data: {} })
  t.equal(logout.status(), 200)
  pageLoads.length = 0
  await page.click('#projects')
  await page.waitForSelector('#kc-login, #user-name')
  if (await page.$('#kc-login') !== null) {
    await page.fill('#username', 'bob')
    await page.fill('#password', 'bob')
    await page.click('#kc-login')
  }
  await page.waitForSelector('#user-name')
  t.equal(pageLoads[0], '/login', 'the in-app move to /login became a page load')
  t.ok(pageLoads.includes('/api/login/keycloak'), 'which requireLogin sent to Keycloak')
  t.equal(page.url(), `${host.url}/projects/p1?tab=info`, 'back on the page the session ended on, with its query')
  t.equal(await page.textContent('#user-name'), 'Bob Brown')

  // Ended again within ten seconds: the empty login page, not a loop of reloads.
  await context.request.post(`${host.url}/api/login.logout`, { data: {} })
  pageLoads.length = 0
  await page.click('#projects')
  await page.waitForSelector('#in-app-login')
  await page.waitForTimeout(1000)
  t.same(pageLoads, [], 'no second reload within ten seconds')
  t.equal(new URL(page.url()).pathname, '/login')
})
