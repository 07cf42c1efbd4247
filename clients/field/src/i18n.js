/*
 * i18n.js — the field app's words, Chinese first (zh-CN), English second.
 * t(key, ...args) formats {0}, {1}; the server's error codes and quarantine
 * reasons have their own sentences so a volunteer reads why, not a number.
 */
const zh = {
  app: '医保走访', enroll_title: '登记本机', enroll_help: '用工作站发给您的登记二维码或登记码登记本机。',
  scan: '扫描二维码', from_photo: '从照片识别', token: '登记码', token_ph: '26 位登记码，或 doorstep:// 链接',
  volunteer: '您的姓名', do_enroll: '登记', enrolling: '正在登记…', stop_scan: '停止扫描',
  no_camera: '无法打开摄像头，请用"从照片识别"或输入登记码。', qr_none: '照片中没有找到二维码。',
  households: '我的住户', household: '住户', members: '成员', no_households: '还没有住户，请先同步。',
  grid: '网格', address: '住址', head: '户主', phone: '电话', note: '备注', visits: '走访记录',
  last_visit: '最近走访', never_visited: '未走访', visited_today: '今日已走访',
  add_visit: '记录走访', add_person: '新增成员', save: '保存', cancel: '取消', back: '返回',
  saved: '已保存（待同步）', pending: '待同步', edits_pending: '{0} 条待同步',
  person: '人员档案', name: '姓名', id_number: '身份证号', gender: '性别', birth_date: '出生日期',
  relation: '与户主关系', insurance_type: '参保类型', payment: '缴费状态', paid_years: '已缴费年度',
  tags: '重点人群', life_status: '人员状态', errands_done: '代办次数', review: '办理进度',
  year: '参保年度', conflict: '有冲突：请核实后选一个', choose: '以此为准', writers: '（{0} 人填写）', add_errand: '代办 +1',
  raise_to: '推进到', date: '日期', method: '方式', result: '结果', service: '办理事项',
  sync: '同步', sync_now: '立即同步', syncing: '正在同步…', last_sync: '上次同步', never: '从未',
  sync_ok: '同步完成：上传 {0} 条，下载 {1} 条', sync_failed: '同步失败：{0}',
  will_retry: '网络恢复后会自动重试。', offline: '离线：修改已保存在本机，联网后同步。',
  phase_connect: '正在连接…', phase_push: '上传 {0}/{1}', phase_pull: '已下载 {0} 条',
  phase_snapshot: '已下载 {0} 份档案', phase_wait: '服务器繁忙，{0} 秒后继续',
  held: '待工作站审核', held_help: '这些修改已送达，但由工作站审核后才生效。',
  refused: '被退回的修改', refused_help: '服务器未接受这些修改，内容已保留在本机，请联系工作站。',
  outbox: '待上传', nothing: '无', device: '本机', device_id: '设备号', language: 'English',
  new_person: '新增人员', person_id: '档案号', id_ok: '校验通过：{0}，{1}', required: '必填',
  revoked_wiped: '本机已被工作站停用，记录已交回，本机数据已清除。',
  revoked_pending: '本机已被工作站停用，还有记录未能交回，下次同步时再试。',
  revoked_hard: '本机已被工作站吊销，不能再同步。请把手机带到工作站处理。',
  /* validation (validate.js keys) */
  v_idnum_format: '身份证号应为 18 位，最后一位可为 X', v_idnum_region: '地区码不能为 000000',
  v_idnum_date: '身份证号中的出生日期不存在', v_idnum_check: '身份证号校验位不对，请核对',
  v_phone: '电话号码格式不对（手机 11 位，或区号-号码）', v_date: '日期格式应为 年-月-日',
  v_enum: '请选择一个选项', v_text_long: '内容太长', v_value: '内容无效', v_range: '超出范围',
  v_recid: '编号只能用字母、数字和 _ . -', v_required: '必填项未填写',
  /* server codes */
  e_connect: '连不上服务器', e_closed: '与服务器的连接断开了', e_timeout: '服务器没有响应',
  e_proto: '服务器的回答无法识别', e_server_key: '服务器身份与登记时不同，已停止同步（请联系工作站）',
  e_chain: '服务器上的记录比本机多（本机数据可能是旧的备份）', e_insecure: '只能通过加密连接（wss://）同步',
  e_url: '服务器地址无效', e_token: '登记码格式不对（26 位字母数字）', e_spk: '二维码中的服务器密钥无效',
  e_enrolled: '本机已经登记过', e_stalled: '服务器暂时不接收，稍后再试', e_snapshot_sig: '下载的数据签名无效', e_forged: '下载的修改签名无效，未采用；请联系工作站',
  'e_-209': '登记码不存在', 'e_-216': '登记码已被使用过', 'e_-217': '登记码已过期',
  'e_-303': '服务器不认识本机', 'e_-304': '本机已被冻结，请联系工作站', 'e_-305': '本机已被停用',
  'e_-306': '本机签名验证失败', 'e_-307': '本机密钥已失效', 'e_-311': '服务器繁忙',
  'e_-312': '服务器暂时无法保存', 'e_-313': '服务器正在重启', 'e_-315': '需要先更换密钥',
  'e_-316': '上传太快，稍后继续', 'e_-310': '修改不属于本机', 'e_-101': '签名无效',
  /* value errors: the Chinese of crdt_value_message (crdt/errors.c), word for word, so a
   * refused edit reads as the server, the dashboard and the import say it (field_proto) */
  'e_-53': '取值类型不对', 'e_-54': '不是有效的身份证号码（格式、出生日期或校验位错误）',
  'e_-55': '不是有效的电话号码', 'e_-56': '日期应为 YYYY-MM-DD', 'e_-57': '不是允许的取值',
  'e_-58': '年度（键）无效', 'e_-59': '文字太长', 'e_-60': '必填，不能为空', 'e_-51': '没有这一项',
  q_1: '手机时间比服务器快太多', q_2: '同一序号出现两份不同记录（设备被冻结）', q_3: '设备已被冻结',
  q_4: '设备已被停用', q_5: '旧密钥签名', q_6: '记录链断开', q_7: '不在本机负责的住户范围内',
};

const en = {
  app: 'Household visits', enroll_title: 'Enroll this phone', enroll_help: 'Enroll with the QR code or token your station gave you.',
  scan: 'Scan QR code', from_photo: 'Read from photo', token: 'Token', token_ph: '26-character token or doorstep:// link',
  volunteer: 'Your name', do_enroll: 'Enroll', enrolling: 'Enrolling…', stop_scan: 'Stop scanning',
  no_camera: 'Cannot open the camera; read from a photo or type the token.', qr_none: 'No QR code found in the photo.',
  households: 'My households', household: 'Household', members: 'Members', no_households: 'No households yet; sync first.',
  grid: 'Grid', address: 'Address', head: 'Head', phone: 'Phone', note: 'Note', visits: 'Visits',
  last_visit: 'Last visit', never_visited: 'Not visited', visited_today: 'Visited today',
  add_visit: 'Record a visit', add_person: 'Add a member', save: 'Save', cancel: 'Cancel', back: 'Back',
  saved: 'Saved (to sync)', pending: 'pending', edits_pending: '{0} to sync',
  person: 'Person', name: 'Name', id_number: 'ID number', gender: 'Gender', birth_date: 'Birth date',
  relation: 'Relation', insurance_type: 'Insurance', payment: 'Payment', paid_years: 'Paid years',
  tags: 'Key groups', life_status: 'Status', errands_done: 'Errands', review: 'Review',
  year: 'Year', conflict: 'Conflict: check and pick one', choose: 'Use this', writers: ' ({0} wrote it)', add_errand: 'Errand +1',
  raise_to: 'Move to', date: 'Date', method: 'Method', result: 'Result', service: 'Service',
  sync: 'Sync', sync_now: 'Sync now', syncing: 'Syncing…', last_sync: 'Last sync', never: 'never',
  sync_ok: 'Synced: {0} sent, {1} received', sync_failed: 'Sync failed: {0}',
  will_retry: 'Will retry when the network is back.', offline: 'Offline: edits are saved on this phone.',
  phase_connect: 'Connecting…', phase_push: 'Sending {0}/{1}', phase_pull: '{0} received',
  phase_snapshot: '{0} files received', phase_wait: 'Server busy; continuing in {0} s',
  held: 'Waiting for station review', held_help: 'These edits arrived; the station reviews them first.',
  refused: 'Refused edits', refused_help: 'The server did not accept these; they stay on this phone.',
  outbox: 'To send', nothing: 'none', device: 'This phone', device_id: 'Device', language: '中文',
  new_person: 'New person', person_id: 'File id', id_ok: 'Valid: {0}, {1}', required: 'required',
  revoked_wiped: 'The station retired this phone; its edits were handed in and its data deleted.',
  revoked_pending: 'The station retired this phone; some edits could not be handed in yet: sync again.',
  revoked_hard: 'The station revoked this phone; it cannot sync any more. Take it to the station.',
  v_idnum_format: 'ID number: 18 characters, last may be X', v_idnum_region: 'Region 000000 is invalid',
  v_idnum_date: 'The birth date in the ID number does not exist', v_idnum_check: 'ID number check digit is wrong',
  v_phone: 'Phone: 11-digit mobile or area-number', v_date: 'Date: YYYY-MM-DD',
  v_enum: 'Pick one', v_text_long: 'Too long', v_value: 'Invalid', v_range: 'Out of range',
  v_recid: 'Ids use letters, digits, _ . -', v_required: 'Required',
  e_connect: 'Cannot reach the server', e_closed: 'Connection lost', e_timeout: 'The server did not answer',
  e_proto: 'Unexpected answer from the server', e_server_key: 'Server identity changed; sync stopped',
  e_chain: 'The server holds more than this phone (old backup?)', e_insecure: 'Only encrypted (wss://) servers',
  e_url: 'Bad server address', e_token: 'Token format is wrong', e_spk: 'Bad server key in QR code',
  e_enrolled: 'Already enrolled', e_stalled: 'Server not accepting now', e_snapshot_sig: 'Bad snapshot signature', e_forged: 'Downloaded changes are not validly signed; nothing was applied; contact the station',
  'e_-209': 'Unknown token', 'e_-216': 'Token already used', 'e_-217': 'Token expired',
  'e_-303': 'Unknown device', 'e_-304': 'Device frozen', 'e_-305': 'Device revoked',
  'e_-306': 'Signature check failed', 'e_-307': 'Key no longer valid', 'e_-311': 'Server busy',
  'e_-312': 'Server cannot store now', 'e_-313': 'Server restarting', 'e_-315': 'Key rotation required',
  'e_-316': 'Rate limited', 'e_-310': 'Not this device', 'e_-101': 'Bad signature',
  'e_-53': 'Invalid value', 'e_-54': 'Invalid ID number', 'e_-55': 'Invalid phone', 'e_-56': 'Invalid date',
  'e_-57': 'Invalid option', 'e_-58': 'Invalid year', 'e_-59': 'Too long', 'e_-60': 'Required',
  'e_-51': 'Unknown field',
  q_1: 'Phone clock far ahead', q_2: 'Clone detected', q_3: 'Device frozen', q_4: 'Device revoked',
  q_5: 'Old key', q_6: 'Chain fork', q_7: 'Outside this phone\'s households',
};

/** Both tables, for tests (tests/field/proto_test.mjs). */
export const STRINGS = { zh, en };

let lang = (typeof localStorage !== 'undefined' && localStorage.getItem('lang')) || 'zh';

export function setLang(l) { lang = l; localStorage.setItem('lang', l); }
export function getLang() { return lang; }

export function t(key, ...args) {
  const d = lang === 'en' ? en : zh;
  let s = d[key] ?? zh[key] ?? key;
  args.forEach((a, i) => { s = s.replace(`{${i}}`, a); });
  return s;
}

/** A sentence for an error: server code, local code, or the raw message. */
export function errText(e) {
  const k = 'e_' + (e && e.code !== undefined ? e.code : '');
  const d = lang === 'en' ? en : zh;
  if (d[k]) return d[k];
  return (e && e.message) || String(e);
}

/** Why the server refused (code) or held (reason number) a delta. */
export function refusedText(code, msg) { return t('e_' + code) !== 'e_' + code ? t('e_' + code) : msg; }
export function heldText(code) { return t('q_' + code); }
